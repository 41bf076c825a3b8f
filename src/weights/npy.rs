//! NumPy `.npy` files: model inputs and reference outputs.
//!
//! Only little-endian float32 in C order is read, because that is what the
//! compiled models consume; anything else is rejected with the conversion to
//! apply in NumPy rather than converted silently.

use std::path::Path;

use miette::Diagnostic;
use thiserror::Error;

use super::{write_atomic, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Deeper nesting than any real header; bounds recursion on hostile input.
const MAX_DEPTH: usize = 16;

/// Errors from reading or writing `.npy` files and checking input shapes.
#[derive(Debug, Error, Diagnostic)]
pub enum NpyError {
    #[error("cannot {action} `{path}`: {source}")]
    #[diagnostic(
        code(resnetc::npy::io),
        help("check that the path exists and that you may {action} it")
    )]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is not a .npy file: {found}")]
    #[diagnostic(
        code(resnetc::npy::not_npy),
        help("save the array with `np.save(path, x.astype(np.float32))`; for an .npz archive save the one array you need with `np.save`")
    )]
    NotNpy { path: String, found: String },

    #[error(
        "`{path}` is .npy format version {major}.{minor}; resnetc reads versions 1.0, 2.0 and 3.0"
    )]
    #[diagnostic(
        code(resnetc::npy::version),
        help("re-save it with `np.save`, which writes version 1.0 unless the header is huge")
    )]
    UnsupportedVersion { path: String, major: u8, minor: u8 },

    #[error("`{path}` has a malformed .npy header: {detail}")]
    #[diagnostic(
        code(resnetc::npy::bad_header),
        help("the header must be a dict like {{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }}; re-save the array with `np.save`")
    )]
    BadHeader { path: String, detail: String },

    #[error("`{path}` holds {meaning} (`{descr}`), but resnetc reads only float32 (`<f4`)")]
    #[diagnostic(
        code(resnetc::npy::dtype),
        help("convert in NumPy: `np.save(path, np.ascontiguousarray(x, dtype=np.float32))`")
    )]
    UnsupportedDtype {
        path: String,
        descr: String,
        meaning: String,
    },

    #[error("`{path}` holds big-endian float32 (`{descr}`), but resnetc reads only little-endian float32 (`<f4`)")]
    #[diagnostic(
        code(resnetc::npy::big_endian),
        help("convert in NumPy: `np.save(path, x.astype('<f4'))`")
    )]
    BigEndian { path: String, descr: String },

    #[error("`{path}` stores its {shape:?} array in Fortran (column-major) order, but resnetc reads only C order")]
    #[diagnostic(
        code(resnetc::npy::fortran_order),
        help("convert in NumPy: `np.save(path, np.ascontiguousarray(x, dtype=np.float32))`")
    )]
    FortranOrder { path: String, shape: Vec<usize> },

    #[error("`{path}` has shape {shape}, whose size in bytes overflows")]
    #[diagnostic(
        code(resnetc::npy::shape_overflow),
        help("the header is corrupt; re-save the array with `np.save`")
    )]
    ShapeOverflow { path: String, shape: String },

    #[error("`{path}` is truncated: shape {shape:?} needs {expected_bytes} bytes ({elements} float32 values) but only {found_bytes} bytes of data follow the header")]
    #[diagnostic(
        code(resnetc::npy::truncated),
        help("the file was probably cut short while copying or writing; produce it again")
    )]
    Truncated {
        path: String,
        shape: Vec<usize>,
        elements: usize,
        expected_bytes: usize,
        found_bytes: usize,
    },

    #[error("`{path}` has {extra} unexpected bytes after its data: shape {shape:?} needs {expected_bytes} bytes ({elements} float32 values) but {found_bytes} bytes follow the header", extra = found_bytes.saturating_sub(*expected_bytes))]
    #[diagnostic(
        code(resnetc::npy::trailing_bytes),
        help("the header's shape disagrees with the data, or several arrays were appended to one file; save a single array with `np.save`")
    )]
    TrailingBytes {
        path: String,
        shape: Vec<usize>,
        elements: usize,
        expected_bytes: usize,
        found_bytes: usize,
    },

    #[error("cannot write `{path}`: tensor shape {shape:?} does not match its {len} values")]
    #[diagnostic(
        code(resnetc::npy::bad_tensor),
        help("this is a bug in the caller: the tensor's data length must equal the product of its shape")
    )]
    InconsistentTensor {
        path: String,
        shape: Vec<usize>,
        len: usize,
    },

    #[error("input `{path}` has shape {found:?} but the model takes [N, {expected}]", expected = join_dims(expected))]
    #[diagnostic(
        code(resnetc::npy::input_shape),
        help("the first axis is the batch (any size >= 1); the other axes must match the model's input exactly")
    )]
    InputShape {
        path: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

fn join_dims(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a little-endian float32 C-order `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        action: "read",
        path: name.clone(),
        source,
    })?;
    parse_npy(&bytes, &name)
}

/// Parses `.npy` bytes; `source_name` is what error messages call the file.
pub fn parse_npy(bytes: &[u8], source_name: &str) -> Result<Tensor, NpyError> {
    let path = source_name.to_string();
    let bad_header = |detail: String| NpyError::BadHeader {
        path: path.clone(),
        detail,
    };
    if !bytes.starts_with(MAGIC) {
        return Err(NpyError::NotNpy {
            path: path.clone(),
            found: describe_start(bytes),
        });
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err(bad_header("the file ends inside the version field".into())),
    };
    let (len_size, latin1) = match (major, minor) {
        (1, 0) => (2, true),
        (2, 0) => (4, true),
        (3, 0) => (4, false),
        _ => return Err(NpyError::UnsupportedVersion { path, major, minor }),
    };
    let header_start = 8 + len_size;
    let header_len = match bytes.get(8..header_start) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Err(bad_header("the file ends inside the header length".into())),
    };
    let header_end = header_start.saturating_add(header_len);
    let Some(raw_header) = bytes.get(header_start..header_end) else {
        return Err(bad_header(format!(
            "the header claims {header_len} bytes but the file has only {} after the header length",
            bytes.len().saturating_sub(header_start)
        )));
    };
    let text: String = if latin1 {
        raw_header.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf8(raw_header.to_vec())
            .map_err(|_| bad_header("the version 3.0 header is not valid UTF-8".into()))?
    };
    let header = parse_header(&text)
        .map_err(|detail| bad_header(format!("{detail} in `{}`", shorten(text.trim_end(), 200))))?;

    let descr = match header.descr {
        Value::Str(s) => s,
        _ => {
            return Err(NpyError::UnsupportedDtype {
                path,
                descr: "[...]".into(),
                meaning: "a structured (record) array".into(),
            })
        }
    };
    if descr != "<f4" {
        return Err(if descr == ">f4" {
            NpyError::BigEndian { path, descr }
        } else {
            NpyError::UnsupportedDtype {
                meaning: describe_descr(&descr),
                path,
                descr,
            }
        });
    }

    let dims = match &header.shape {
        Value::Tuple(items) => items,
        _ => return Err(bad_header("'shape' is not a tuple".into())),
    };
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        match d {
            Value::Int(Some(n)) => match usize::try_from(*n) {
                Ok(n) => shape.push(n),
                Err(_) => {
                    return Err(NpyError::ShapeOverflow {
                        path,
                        shape: header.shape.to_string(),
                    })
                }
            },
            Value::Int(None) => {
                return Err(NpyError::ShapeOverflow {
                    path,
                    shape: header.shape.to_string(),
                })
            }
            _ => {
                return Err(bad_header(
                    "'shape' must hold only non-negative integers".into(),
                ))
            }
        }
    }
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some((elements, expected_bytes)) = elements.and_then(|n| Some((n, n.checked_mul(4)?)))
    else {
        return Err(NpyError::ShapeOverflow {
            path,
            shape: header.shape.to_string(),
        });
    };

    match header.fortran_order {
        Value::Bool(false) => {}
        // With at most one axis longer than 1 both orders are the same bytes.
        Value::Bool(true) if shape.iter().filter(|&&d| d > 1).count() <= 1 => {}
        Value::Bool(true) => return Err(NpyError::FortranOrder { path, shape }),
        _ => return Err(bad_header("'fortran_order' must be True or False".into())),
    }

    let data = bytes.get(header_end..).unwrap_or_default();
    let found_bytes = data.len();
    if found_bytes != expected_bytes {
        return Err(if found_bytes < expected_bytes {
            NpyError::Truncated {
                path,
                shape,
                elements,
                expected_bytes,
                found_bytes,
            }
        } else {
            NpyError::TrailingBytes {
                path,
                shape,
                elements,
                expected_bytes,
                found_bytes,
            }
        });
    }
    let data = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Tensor { shape, data })
}

/// Serialises a tensor as `.npy` bytes exactly as `np.save` would (version
/// 1.0, header padded with spaces to a 64-byte boundary and ended by '\n').
pub fn npy_bytes(t: &Tensor, source_name: &str) -> Result<Vec<u8>, NpyError> {
    let count = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(t.data.len()) {
        return Err(NpyError::InconsistentTensor {
            path: source_name.to_string(),
            shape: t.shape.clone(),
            len: t.data.len(),
        });
    }
    let shape = match t.shape.as_slice() {
        [d] => format!("({d},)"),
        dims => format!("({})", join_dims(dims)),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0 unless the header outgrows its u16 length, as numpy does.
    let (version, prefix_len) = if header.len() + 1 + 10 + 63 <= usize::from(u16::MAX) {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (prefix_len + header.len() + 1).div_ceil(64) * 64;
    while prefix_len + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * t.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes a tensor as a float32 `.npy` file, atomically.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let name = path.display().to_string();
    let bytes = npy_bytes(t, &name)?;
    write_atomic(path, &bytes).map_err(|source| NpyError::Io {
        action: "write",
        path: name,
        source,
    })
}

/// Checks that `t` is `[batch, expected_features...]` with `batch >= 1`,
/// so a wrong input is caught before it reaches a kernel.
pub fn check_input_shape(
    t: &Tensor,
    expected_features: &[usize],
    source_name: &str,
) -> Result<(), NpyError> {
    match t.shape.split_first() {
        Some((&batch, rest)) if batch >= 1 && rest == expected_features => Ok(()),
        _ => Err(NpyError::InputShape {
            path: source_name.to_string(),
            found: t.shape.clone(),
            expected: expected_features.to_vec(),
        }),
    }
}

/// Names a dtype descriptor in words, e.g. `<f8` -> "float64".
fn describe_descr(descr: &str) -> String {
    let (order, rest) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (Some(c), &descr[1..]),
        _ => (None, descr),
    };
    let mut chars = rest.chars();
    let kind = chars.next();
    let size: Option<usize> = chars.as_str().parse().ok();
    let bits = size.and_then(|s| s.checked_mul(8));
    let base = match (kind, bits) {
        (Some('f'), Some(b)) => format!("float{b}"),
        (Some('i'), Some(b)) => format!("int{b}"),
        (Some('u'), Some(b)) => format!("uint{b}"),
        (Some('c'), Some(b)) => format!("complex{b}"),
        (Some('b'), _) => "bool".to_string(),
        (Some('U'), _) => "unicode strings".to_string(),
        (Some('S' | 'a'), _) => "byte strings".to_string(),
        (Some('O'), _) => "Python objects".to_string(),
        (Some('M'), _) => "datetimes".to_string(),
        (Some('m'), _) => "timedeltas".to_string(),
        (Some('V'), _) => "raw bytes (void)".to_string(),
        _ => "an unknown dtype".to_string(),
    };
    match order {
        Some('>') if size.is_some_and(|s| s > 1) => format!("big-endian {base}"),
        Some('=') => format!("native-order {base}"),
        _ => base,
    }
}

fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "the file is empty".into()
    } else if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
        format!("the file is only {} bytes long", bytes.len())
    } else if bytes.starts_with(b"PK\x03\x04") {
        "it is a zip archive (an .npz?)".into()
    } else if bytes.len() >= 9 && bytes.get(8) == Some(&b'{') {
        "it looks like a safetensors file".into()
    } else {
        let shown: String = bytes
            .iter()
            .take(8)
            .map(|b| std::ascii::escape_default(*b).to_string())
            .collect();
        format!("it starts with `{shown}` instead of `\\x93NUMPY`")
    }
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Header parsing: the Python literal subset that `np.save` writes.
// ---------------------------------------------------------------------------

/// A Python literal from a header. `Int(None)` is an integer too large for u64.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Int(Option<u64>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    NoneLit,
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |items: &[Value]| {
            items
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Value::Str(s) => write!(f, "'{s}'"),
            Value::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Value::Int(Some(n)) => write!(f, "{n}"),
            Value::Int(None) => write!(f, "<huge>"),
            Value::Tuple(items) if items.len() == 1 => write!(f, "({},)", join(items)),
            Value::Tuple(items) => write!(f, "({})", join(items)),
            Value::List(items) => write!(f, "[{}]", join(items)),
            Value::NoneLit => write!(f, "None"),
        }
    }
}

struct Header {
    descr: Value,
    fortran_order: Value,
    shape: Value,
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {}
    }

    /// Consumes `c` (after whitespace) if it is next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        self.chars.next_if_eq(&c).is_some()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(match self.chars.peek() {
                Some(found) => format!("expected `{c}` but found `{found}`"),
                None => format!("expected `{c}` but the header ended"),
            })
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        match self.chars.peek().copied() {
            Some(q @ ('\'' | '"')) => {
                self.chars.next();
                let mut s = String::new();
                loop {
                    match self.chars.next() {
                        Some(c) if c == q => return Ok(Value::Str(s)),
                        Some('\\') => s.extend(self.chars.next()),
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
            }
            Some(open @ ('(' | '[')) => {
                self.chars.next();
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err("nesting too deep".into());
                }
                let close = if open == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.eat(close) {
                    items.push(self.value()?);
                    trailing_comma = self.eat(',');
                    if !trailing_comma {
                        self.expect(close)?;
                        break;
                    }
                }
                self.depth -= 1;
                if open == '(' && items.len() == 1 && !trailing_comma {
                    // `(5)` is just a parenthesised 5 in Python.
                    return Ok(items.remove(0));
                }
                Ok(if open == '(' {
                    Value::Tuple(items)
                } else {
                    Value::List(items)
                })
            }
            Some(c) if c.is_ascii_digit() => {
                let mut n = Some(0u64);
                while let Some(d) = self.chars.next_if(char::is_ascii_digit) {
                    let digit = u64::from(d.to_digit(10).unwrap_or(0));
                    n = n
                        .and_then(|n| n.checked_mul(10))
                        .and_then(|n| n.checked_add(digit));
                }
                // Python 2 wrote longs as `3L`.
                self.chars.next_if(|&c| c == 'L' || c == 'l');
                Ok(Value::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let mut word = String::new();
                while let Some(c) = self
                    .chars
                    .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    word.push(c);
                }
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::NoneLit),
                    _ => Err(format!("unexpected word `{word}`")),
                }
            }
            Some(c) => Err(format!("unexpected `{c}`")),
            None => Err("the header ended early".into()),
        }
    }
}

/// Parses `{'descr': ..., 'fortran_order': ..., 'shape': ..., }`; unknown
/// keys are ignored, missing ones are errors.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        chars: text.chars().peekable(),
        depth: 0,
    };
    p.expect('{')?;
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    while !p.eat('}') {
        let key = match p.value()? {
            Value::Str(k) => k,
            other => return Err(format!("dict key {other} is not a string")),
        };
        p.expect(':')?;
        let v = p.value()?;
        match key.as_str() {
            "descr" => descr = Some(v),
            "fortran_order" => fortran_order = Some(v),
            "shape" => shape = Some(v),
            _ => {}
        }
        if !p.eat(',') {
            p.expect('}')?;
            break;
        }
    }
    p.skip_ws();
    if let Some(c) = p.chars.peek() {
        return Err(format!("unexpected `{c}` after the dict"));
    }
    let missing: Vec<&str> = [
        ("descr", descr.is_none()),
        ("fortran_order", fortran_order.is_none()),
        ("shape", shape.is_none()),
    ]
    .iter()
    .filter(|(_, m)| *m)
    .map(|(k, _)| *k)
    .collect();
    match (descr, fortran_order, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header {
            descr,
            fortran_order,
            shape,
        }),
        _ => Err(format!("missing key(s) {}", missing.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1.0 file with the given header text (padded like numpy) and data.
    fn npy_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f4(shape: &str) -> String {
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}")
    }

    fn err(bytes: &[u8]) -> String {
        parse_npy(bytes, "x.npy")
            .expect_err("should fail")
            .to_string()
    }

    fn floats(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn reads_numpy_layout() {
        let t = parse_npy(&npy_with(&f4("(2, 3)"), &floats(6)), "x.npy").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn header_spelling_variants() {
        for (header, shape) in [
            (
                "{'descr':'<f4','fortran_order':False,'shape':(5,)}",
                vec![5],
            ),
            (
                "{ 'shape' : ( 5 , ) , 'descr' : \"<f4\" , 'fortran_order' : False }",
                vec![5],
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                vec![],
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 5L), }",
                vec![1, 5],
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), 'extra': None, }",
                vec![0, 3],
            ),
        ] {
            let n: usize = shape.iter().product();
            let t = parse_npy(&npy_with(header, &floats(n)), "x.npy")
                .unwrap_or_else(|e| panic!("{header}: {e}"));
            assert_eq!(t.shape, shape, "{header}");
        }
    }

    #[test]
    fn versions_2_and_3() {
        for version in [2u8, 3] {
            let h = format!("{}\n", f4("(3,)"));
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[version, 0]);
            b.extend_from_slice(&(h.len() as u32).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&floats(3));
            assert_eq!(parse_npy(&b, "x.npy").unwrap().data, vec![0.0, 1.0, 2.0]);
        }
    }

    #[test]
    fn round_trip_matches_numpy_layout() {
        let dir = tempfile::tempdir().unwrap();
        for shape in [vec![2, 3, 4, 5], vec![7], vec![], vec![0, 4], vec![1; 30]] {
            let n: usize = shape.iter().product();
            let t = Tensor::from_vec(&shape, (0..n).map(|i| i as f32 * -0.5).collect());
            let p = dir.path().join("t.npy");
            write_npy(&p, &t).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0);
            assert_eq!(bytes[10 + header_len - 1], b'\n');
            assert_eq!(read_npy(&p).unwrap(), t);
        }
        let b = npy_bytes(&Tensor::from_vec(&[5], vec![0.0; 5]), "x").unwrap();
        assert!(String::from_utf8_lossy(&b).contains("'shape': (5,), }"));
        let b = npy_bytes(&Tensor::from_vec(&[], vec![1.0]), "x").unwrap();
        assert!(String::from_utf8_lossy(&b).contains("'shape': (), }"));
    }

    #[test]
    fn not_npy() {
        let e = err(b"hello there");
        assert!(e.contains("`x.npy` is not a .npy file"), "{e}");
        assert!(e.contains("hello th"), "{e}");
        assert!(err(b"").contains("empty"));
        assert!(err(b"\x93NU").contains("only 3 bytes"));
        assert!(err(b"PK\x03\x04zzzz").contains("zip"));
        let mut st = 10u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"a\":1}   ");
        assert!(err(&st).contains("safetensors"));
    }

    #[test]
    fn unsupported_version() {
        let mut b = npy_with(&f4("(1,)"), &floats(1));
        b[6] = 4;
        b[7] = 1;
        let e = err(&b);
        assert!(e.contains("version 4.1") && e.contains("x.npy"), "{e}");
    }

    #[test]
    fn bad_headers() {
        for (header, needle) in [
            ("{'descr': '<f4', 'fortran_order': False}", "missing key(s) shape"),
            ("{'descr': '<f4', 'shape': (1,)", "expected `}`"),
            ("not a dict", "expected `{`"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk", "after the dict"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "unexpected `-`"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': 'abc', }", "not a tuple"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (5), }", "not a tuple"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,), }", "expected `)`"),
            ("{'descr': '<f4', 'fortran_order': 'no', 'shape': (1,), }", "True or False"),
            ("{'descr: '<f4'", "expected `:`"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((((((((((1,),),),),),),),),),),),),),),),),),),), }", "too deep"),
        ] {
            let e = err(&npy_with(header, &floats(1)));
            assert!(e.contains("x.npy") && e.contains("malformed"), "{header}: {e}");
            assert!(e.contains(needle), "{header}: {e}");
        }
        // Header length beyond the end of the file.
        let mut b = npy_with(&f4("(1,)"), &[]);
        b.truncate(40);
        let e = err(&b);
        assert!(e.contains("header claims 118 bytes"), "{e}");
        // Ends inside the fixed prefix.
        assert!(err(b"\x93NUMPY\x01").contains("version field"));
        assert!(err(b"\x93NUMPY\x01\x00\x05").contains("header length"));
        // Version 3 requires UTF-8.
        let mut b = npy_with(&f4("(1,)"), &floats(1));
        b[6] = 3;
        let h = (b.len() - 10 - 4) as u32;
        b.splice(8..10, h.to_le_bytes());
        b[20] = 0xff;
        assert!(err(&b).contains("UTF-8"));
    }

    #[test]
    fn dtype_errors_name_the_dtype() {
        for (descr, words) in [
            ("<f8", "float64"),
            ("<i8", "int64"),
            ("|u1", "uint8"),
            ("<f2", "float16"),
            ("|b1", "bool"),
            (">f8", "big-endian float64"),
            ("<U5", "unicode"),
        ] {
            let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
            let e = parse_npy(&npy_with(&h, &[0; 8]), "x.npy").unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(descr) && msg.contains(words), "{msg}");
            assert!(msg.contains("x.npy") && msg.contains("<f4"), "{msg}");
            let help = miette::Diagnostic::help(&e).unwrap().to_string();
            assert!(
                help.contains("np.ascontiguousarray(x, dtype=np.float32)"),
                "{help}"
            );
        }
        let h = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }";
        assert!(err(&npy_with(h, &[0; 4])).contains("structured"));
    }

    #[test]
    fn big_endian() {
        let h = "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }";
        let e = err(&npy_with(h, &[0; 4]));
        assert!(
            e.contains("big-endian") && e.contains("`>f4`") && e.contains("x.npy"),
            "{e}"
        );
    }

    #[test]
    fn fortran_order() {
        let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        let e = err(&npy_with(h, &floats(6)));
        assert!(
            e.contains("Fortran") && e.contains("[2, 3]") && e.contains("x.npy"),
            "{e}"
        );
        // Same bytes in either order: accepted.
        let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 3), }";
        assert_eq!(
            parse_npy(&npy_with(h, &floats(3)), "x").unwrap().shape,
            vec![1, 3]
        );
    }

    #[test]
    fn truncated_and_trailing_data() {
        let e = err(&npy_with(&f4("(2, 3)"), &floats(5)));
        assert!(e.contains("truncated") && e.contains("x.npy"), "{e}");
        assert!(
            e.contains("24 bytes") && e.contains("6 float32") && e.contains("only 20"),
            "{e}"
        );

        let mut data = floats(6);
        data.push(0);
        let e = err(&npy_with(&f4("(2, 3)"), &data));
        assert!(
            e.contains("1 unexpected bytes") && e.contains("25 bytes"),
            "{e}"
        );
    }

    #[test]
    fn shape_overflow_and_huge_shapes() {
        let e = err(&npy_with(&f4("(4294967296, 4294967296, 2)"), &[]));
        assert!(
            e.contains("overflows") && e.contains("(4294967296, 4294967296, 2)"),
            "{e}"
        );
        let e = err(&npy_with(&f4("(99999999999999999999999,)"), &[]));
        assert!(e.contains("overflows"), "{e}");
        // Plausible but absent data: reported, not allocated.
        let e = err(&npy_with(&f4("(1000000000000,)"), &floats(1)));
        assert!(
            e.contains("truncated") && e.contains("4000000000000 bytes"),
            "{e}"
        );
    }

    #[test]
    fn write_rejects_inconsistent_tensor() {
        let t = Tensor {
            shape: vec![3],
            data: vec![1.0],
        };
        let e = npy_bytes(&t, "o.npy").unwrap_err().to_string();
        assert!(
            e.contains("o.npy") && e.contains("[3]") && e.contains("1 values"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = read_npy(Path::new("/no/such/x.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/x.npy"), "{e}");
    }

    #[test]
    fn input_shape_check() {
        let t = Tensor::zeros(&[2, 3, 64, 64]);
        let e = check_input_shape(&t, &[3, 32, 32], "x.npy")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "input `x.npy` has shape [2, 3, 64, 64] but the model takes [N, 3, 32, 32]"
        );
        assert!(check_input_shape(&t, &[3, 64, 64], "x.npy").is_ok());
        assert!(check_input_shape(&Tensor::zeros(&[0, 3, 64, 64]), &[3, 64, 64], "x").is_err());
        assert!(check_input_shape(&Tensor::zeros(&[3, 64, 64]), &[3, 64, 64], "x").is_err());
        assert!(check_input_shape(&Tensor::zeros(&[5]), &[], "x").is_ok());
        assert!(check_input_shape(&Tensor::zeros(&[]), &[], "x").is_err());
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = npy_bytes(&Tensor::from_vec(&[2, 2], vec![1.0; 4]), "x").unwrap();
        for cut in 0..bytes.len() {
            let _ = parse_npy(&bytes[..cut], "cut");
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..bytes.len() {
            for _ in 0..16 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mut b = bytes.clone();
                b[i] = s as u8;
                let _ = parse_npy(&b, "flip");
            }
        }
    }
}
