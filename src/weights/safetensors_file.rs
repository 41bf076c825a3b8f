//! Reading and writing safetensors checkpoints.
//!
//! A small hand-written reader rather than the `safetensors` crate: it lets
//! every defect be reported with the file and tensor name, accepts files the
//! crate rejects for harmless reasons (unsorted offsets, unknown dtypes of
//! tensors we skip anyway), and skips BatchNorm `num_batches_tracked`
//! counters whatever they hold.
//!
//! Layout: 8-byte little-endian header length `N`, `N` bytes of JSON mapping
//! each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`
//! (plus an optional `"__metadata__"`), then the data buffer that the
//! offsets index.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{write_atomic, Tensor, Weights, WeightsError};

/// BatchNorm step counters (int64 scalars in torchvision checkpoints) that
/// inference never uses.
const SKIPPED_SUFFIX: &str = "num_batches_tracked";
const METADATA_KEY: &str = "__metadata__";

/// One header entry as stored; widths are u64 so that absurd values are
/// reported rather than rejected by serde with a vaguer message.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The header's entries in file order, repeated names kept: a JSON map
/// would silently keep the last of two entries with one name.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads a safetensors file; F16 and BF16 tensors are widened to f32.
pub fn load_safetensors(path: &Path) -> Result<Weights, WeightsError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        action: "read",
        path: name.clone(),
        source,
    })?;
    parse_safetensors(&bytes, &name)
}

/// Parses safetensors bytes; `source_name` is what error messages call the file.
pub fn parse_safetensors(bytes: &[u8], source_name: &str) -> Result<Weights, WeightsError> {
    let path = source_name.to_string();
    let Some((len_prefix, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(not_safetensors(
            bytes,
            &path,
            format!("it is only {} bytes long", bytes.len()),
        ));
    };
    // Look at the first JSON byte before trusting the length: any other file
    // type gives a meaningless length, and "not safetensors" is the useful
    // message there, not "truncated".
    if rest.first() != Some(&b'{') {
        let reason = describe_foreign(bytes)
            .unwrap_or("its first 8 bytes are not followed by a JSON header")
            .to_string();
        return Err(not_safetensors(bytes, &path, reason));
    }
    let header_len = u64::from_le_bytes(*len_prefix);
    let Some(n) = usize::try_from(header_len)
        .ok()
        .filter(|&n| n <= rest.len())
    else {
        return Err(WeightsError::HeaderTruncated {
            path,
            header_len,
            available: rest.len(),
        });
    };
    let (header, buffer) = rest.split_at(n);
    let Entries(entries) =
        serde_json::from_slice(header).map_err(|e| WeightsError::InvalidHeader {
            path: path.clone(),
            detail: format!("invalid JSON: {e}"),
        })?;
    let invalid = |detail: String| WeightsError::InvalidHeader {
        path: path.clone(),
        detail,
    };

    let mut weights = Weights::new();
    let mut bad_dtypes = Vec::new();
    // (begin, end, name) of every tensor read, to find two sharing bytes.
    let mut ranges: Vec<(usize, usize, String)> = Vec::new();
    for (name, value) in entries {
        if name == METADATA_KEY || name.ends_with(SKIPPED_SUFFIX) {
            continue;
        }
        if weights.contains_key(&name) || bad_dtypes.iter().any(|(n, _)| *n == name) {
            return Err(invalid(format!(
                "tensor `{name}` is listed twice (which one is meant?)"
            )));
        }
        let entry = Entry::deserialize(value).map_err(|e| WeightsError::InvalidHeader {
            path: path.clone(),
            detail: format!("entry `{name}`: {e}"),
        })?;
        let elem_size = match entry.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            _ => {
                bad_dtypes.push((name, entry.dtype));
                continue;
            }
        };
        let shape: Option<Vec<usize>> = entry
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect();
        let nbytes = shape.as_ref().and_then(|s| {
            s.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|count| count.checked_mul(elem_size))
        });
        let (Some(shape), Some(nbytes)) = (shape, nbytes) else {
            return Err(WeightsError::ShapeOverflow {
                path,
                tensor: name,
                shape: entry.shape,
            });
        };
        let [begin, end] = entry.data_offsets;
        let range = usize::try_from(begin)
            .ok()
            .zip(usize::try_from(end).ok())
            .filter(|&(b, e)| b <= e && e <= buffer.len());
        let Some((b, e)) = range else {
            return Err(WeightsError::OffsetsOutOfRange {
                path,
                tensor: name,
                begin,
                end,
                buffer_len: buffer.len(),
            });
        };
        if e - b != nbytes {
            return Err(WeightsError::OffsetsMismatch {
                path,
                tensor: name,
                dtype: entry.dtype,
                shape,
                expected_bytes: nbytes,
                begin,
                end,
            });
        }
        let raw = buffer.get(b..e).unwrap_or_default();
        let data = decode(raw, &entry.dtype);
        ranges.push((b, e, name.clone()));
        weights.insert(name, Tensor { shape, data });
    }
    // The format lays tensors out one after another; two sharing bytes is
    // a corrupt (or hand-made) header, not two tensors.
    ranges.retain(|(b, e, _)| b < e);
    ranges.sort();
    for pair in ranges.windows(2) {
        let ((_, end, a), (begin, _, b)) = (&pair[0], &pair[1]);
        if begin < end {
            return Err(invalid(format!(
                "tensors `{a}` and `{b}` overlap in the data (bytes {begin}..{end})"
            )));
        }
    }
    if !bad_dtypes.is_empty() {
        return Err(WeightsError::UnsupportedDtype {
            path,
            tensors: bad_dtypes,
        });
    }
    Ok(weights)
}

/// Widens little-endian F32/F16/BF16 bytes to f32; `raw` has been checked
/// to hold a whole number of elements.
fn decode(raw: &[u8], dtype: &str) -> Vec<f32> {
    match dtype {
        "F16" => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Recognises the files people most often pass by mistake.
fn describe_foreign(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x93NUMPY") {
        Some("it is a NumPy .npy array")
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some("it is a zip archive (a PyTorch .pt/.pth checkpoint or a .npz?)")
    } else if bytes.first() == Some(&0x80) {
        Some("it looks like a Python pickle (a legacy PyTorch .pt/.pth checkpoint?)")
    } else if !bytes.is_empty()
        && bytes
            .iter()
            .take(512)
            .all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace())
    {
        Some("it looks like a text file")
    } else {
        None
    }
}

fn not_safetensors(bytes: &[u8], path: &str, reason: String) -> WeightsError {
    let is_torch = bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80);
    let hint = if is_torch {
        "convert it in Python: `from safetensors.torch import save_file; \
         save_file(torch.load(path, map_location=\"cpu\"), \"model.safetensors\")`"
    } else {
        "weights must be a safetensors file (8-byte header length, JSON header, data), \
         as written by `safetensors.torch.save_file(model.state_dict(), path)`"
    };
    WeightsError::NotSafetensors {
        path: path.to_string(),
        reason,
        hint: hint.to_string(),
    }
}

/// Serialises `weights` as F32 safetensors bytes, tensors laid out in name
/// order; `source_name` names the destination in errors.
pub fn serialize_safetensors(
    weights: &Weights,
    source_name: &str,
) -> Result<Vec<u8>, WeightsError> {
    let mut header = serde_json::Map::new();
    header.insert(
        METADATA_KEY.to_string(),
        serde_json::json!({ "format": "pt" }),
    );
    let mut offset = 0usize;
    for (name, t) in weights {
        let invalid = |problem: String| WeightsError::InvalidTensor {
            path: source_name.to_string(),
            tensor: name.clone(),
            problem,
        };
        if name == METADATA_KEY {
            return Err(invalid("the name is reserved for metadata".into()));
        }
        let count = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count != Some(t.data.len()) {
            return Err(invalid(format!(
                "shape {:?} does not match its {} values",
                t.shape,
                t.data.len()
            )));
        }
        let end = t
            .data
            .len()
            .checked_mul(4)
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| invalid("the file would exceed the address space".into()))?;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| WeightsError::InvalidHeader {
        path: source_name.to_string(),
        detail: format!("cannot encode the header: {e}"),
    })?;
    // Pad with spaces so that the data buffer starts 8-byte aligned, as the
    // reference writer does (lets readers map f32/f64 data in place).
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in weights.values() {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// Saves `weights` as F32 safetensors, atomically.
pub fn save_safetensors(path: &Path, weights: &Weights) -> Result<(), WeightsError> {
    let name = path.display().to_string();
    let bytes = serialize_safetensors(weights, &name)?;
    write_atomic(path, &bytes).map_err(|source| WeightsError::Io {
        action: "write",
        path: name,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a safetensors file from a raw JSON header and data buffer.
    fn build(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn err_msg(bytes: &[u8]) -> String {
        parse_safetensors(bytes, "w.safetensors")
            .expect_err("should fail")
            .to_string()
    }

    fn sample() -> Weights {
        let mut w = Weights::new();
        w.insert(
            "conv1.weight".into(),
            Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE]),
        );
        w.insert(
            "fc.bias".into(),
            Tensor::from_vec(&[3], vec![0.25, -0.0, 7.0]),
        );
        w.insert("scalar".into(), Tensor::from_vec(&[], vec![42.0]));
        w.insert("empty".into(), Tensor::from_vec(&[0, 3], vec![]));
        w
    }

    #[test]
    fn parses_minimal_f32() {
        let bytes = build(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#,
            &f32_bytes(&[1.5, -2.0]),
        );
        let w = parse_safetensors(&bytes, "w").unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w["a"], Tensor::from_vec(&[2], vec![1.5, -2.0]));
    }

    #[test]
    fn unsorted_offsets_are_accepted() {
        let bytes = build(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &f32_bytes(&[1.0, 2.0]),
        );
        let w = parse_safetensors(&bytes, "w").unwrap();
        assert_eq!(w["a"].data, vec![2.0]);
        assert_eq!(w["b"].data, vec![1.0]);
    }

    #[test]
    fn round_trip_in_memory_and_on_disk() {
        let w = sample();
        let bytes = serialize_safetensors(&w, "mem").unwrap();
        assert_eq!(parse_safetensors(&bytes, "mem").unwrap(), w);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        save_safetensors(&p, &w).unwrap();
        let back = load_safetensors(&p).unwrap();
        assert_eq!(back, w);
        // Bit-exact, including the sign of zero.
        assert_eq!(back["fc.bias"].data[1].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn output_is_valid_for_the_reference_implementation() {
        let w = sample();
        let bytes = serialize_safetensors(&w, "mem").unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), w.len());
        let view = st.tensor("conv1.weight").unwrap();
        assert_eq!(view.shape(), &[2, 1, 1, 2]);
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        assert_eq!(view.data(), f32_bytes(&w["conv1.weight"].data).as_slice());
        // Header padded so the data buffer is 8-byte aligned.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(n % 8, 0);
    }

    #[test]
    fn reads_reference_implementation_output_with_f16_and_bf16() {
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let vals = [1.0f32, -2.5, 0.099_975_586, 65504.0];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let f32b = f32_bytes(&vals);
        let tensors = vec![
            ("h", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
            ("f", TensorView::new(Dtype::F32, vec![4, 1], &f32b).unwrap()),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let w = parse_safetensors(&bytes, "ref").unwrap();
        assert_eq!(w["h"].shape, vec![2, 2]);
        let want_h: Vec<f32> = vals
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(w["h"].data, want_h);
        assert_eq!(w["h"].data[0], 1.0);
        assert_eq!(w["h"].data[1], -2.5);
        assert_eq!(w["h"].data[3], 65504.0);
        let want_b: Vec<f32> = vals
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(w["b"].data, want_b);
        assert_eq!(w["b"].data[1], -2.5);
        assert_eq!(w["f"].data, vals.to_vec());
    }

    #[test]
    fn num_batches_tracked_is_skipped_whatever_its_dtype() {
        let mut data = f32_bytes(&[1.0]);
        data.extend_from_slice(&7i64.to_le_bytes());
        let bytes = build(
            r#"{"bn1.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                "bn1.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[4,12]},
                "layer1.0.bn2.num_batches_tracked":{"dtype":"WEIRD","shape":"garbage","data_offsets":[99,1]}}"#,
            &data,
        );
        let w = parse_safetensors(&bytes, "w").unwrap();
        assert_eq!(w.keys().collect::<Vec<_>>(), vec!["bn1.weight"]);
    }

    #[test]
    fn unsupported_dtypes_are_all_named() {
        let bytes = build(
            r#"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},
                "b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},
                "c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#,
            &[0u8; 16],
        );
        let e = err_msg(&bytes);
        assert!(e.contains("w.safetensors"), "{e}");
        assert!(e.contains("`a` (F64)"), "{e}");
        assert!(e.contains("`b` (I32)"), "{e}");
        assert!(e.contains("2 tensor(s)"), "{e}");
        assert!(!e.contains("`c`"), "{e}");
    }

    #[test]
    fn npy_text_zip_and_short_files_are_not_safetensors() {
        let npy =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let e = err_msg(npy);
        assert!(
            e.contains("`w.safetensors` is not a safetensors file"),
            "{e}"
        );
        assert!(e.contains(".npy"), "{e}");

        let e = err_msg(b"hello world, this is just some text\n");
        assert!(e.contains("is not a safetensors file"), "{e}");
        assert!(e.contains("text"), "{e}");

        let e = parse_safetensors(b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "m.pt").unwrap_err();
        assert!(e.to_string().contains("`m.pt` is not a safetensors file"));
        assert!(e.to_string().contains("zip"));
        let help = miette::Diagnostic::help(&e).unwrap().to_string();
        assert!(help.contains("save_file"), "{help}");

        let e = err_msg(b"abc");
        assert!(e.contains("only 3 bytes long"), "{e}");
        let e = err_msg(b"");
        assert!(e.contains("only 0 bytes long"), "{e}");
    }

    #[test]
    fn header_longer_than_file() {
        let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{\"a\":");
        let e = err_msg(&bytes);
        assert!(e.contains("w.safetensors"), "{e}");
        assert!(e.contains("1000000"), "{e}");
        assert!(e.contains("only 5 bytes"), "{e}");

        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.push(b'{');
        assert!(err_msg(&bytes).contains("truncated"));
    }

    #[test]
    fn invalid_json_and_bad_entries() {
        let e = err_msg(&build("{not json", &[]));
        assert!(
            e.contains("w.safetensors") && e.contains("invalid JSON"),
            "{e}"
        );

        let e = err_msg(&build(r#"{"a": 3}"#, &[]));
        assert!(e.contains("entry `a`"), "{e}");

        let e = err_msg(&build(r#"{"a":{"dtype":"F32","shape":[1]}}"#, &[0; 4]));
        assert!(e.contains("entry `a`") && e.contains("data_offsets"), "{e}");

        let e = err_msg(&build(
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("entry `a`"), "{e}");

        let e = err_msg(&build(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("entry `a`"), "{e}");
    }

    #[test]
    fn offsets_out_of_range() {
        let e = err_msg(&build(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        ));
        assert!(
            e.contains("`a`") && e.contains("[0, 8]") && e.contains("4-byte"),
            "{e}"
        );

        let e = err_msg(&build(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("[4, 0]"), "{e}");

        let e = err_msg(&build(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("`a`"), "{e}");
    }

    #[test]
    fn offsets_disagreeing_with_shape() {
        let e = err_msg(&build(
            r#"{"conv.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#,
            &[0; 16],
        ));
        assert!(e.contains("`conv.weight`"), "{e}");
        assert!(
            e.contains("F32 [2, 2]") && e.contains("needs 16 bytes"),
            "{e}"
        );
        assert!(e.contains("span 12 bytes"), "{e}");

        // A huge shape with a tiny span is rejected before anything is allocated.
        let e = err_msg(&build(
            r#"{"a":{"dtype":"F16","shape":[1099511627776],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("needs 2199023255552 bytes"), "{e}");
    }

    #[test]
    fn shape_product_overflow() {
        let e = err_msg(&build(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("`a`") && e.contains("overflows"), "{e}");
    }

    #[test]
    fn save_rejects_inconsistent_tensors() {
        let mut w = Weights::new();
        w.insert(
            "bad".into(),
            Tensor {
                shape: vec![2, 2],
                data: vec![1.0],
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.safetensors");
        let e = save_safetensors(&p, &w).unwrap_err().to_string();
        assert!(
            e.contains("`bad`") && e.contains("[2, 2]") && e.contains("o.safetensors"),
            "{e}"
        );
        assert!(!p.exists());

        let mut w = Weights::new();
        w.insert("__metadata__".into(), Tensor::from_vec(&[1], vec![1.0]));
        assert!(serialize_safetensors(&w, "x").is_err());
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let e = load_safetensors(Path::new("/no/such/file.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/file.safetensors"), "{e}");
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = serialize_safetensors(&sample(), "mem").unwrap();
        for cut in 0..bytes.len() {
            let _ = parse_safetensors(&bytes[..cut], "cut");
        }
        let mut rng_state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..bytes.len() {
            for _ in 0..8 {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let mut b = bytes.clone();
                b[i] = rng_state as u8;
                let _ = parse_safetensors(&b, "flip");
            }
        }
    }
}
