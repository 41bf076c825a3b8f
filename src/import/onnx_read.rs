//! Decodes an ONNX `ModelProto` (prost, from ONNX's own onnx.proto) into the
//! plain structures the lifter reads: one input, one output, nodes with
//! their attributes, and initializers as checked dense tensors.
//!
//! Every length is checked against the declared shape before any tensor
//! is allocated, so a corrupt file fails with a message, not a panic or an
//! allocation the size of a lie.

use super::error::ImportError;
use super::onnx_proto as pb;
use prost::Message;
use std::collections::HashMap;

/// A constant tensor: an initializer, a `Constant` node or a folded value.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstTensor {
    pub dims: Vec<usize>,
    pub data: ConstData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl ConstTensor {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Str(String),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Tensor(ConstTensor),
    /// A graph, a sparse tensor, strings, ...: nothing resnetc's operators take.
    Other,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: HashMap<String, Attr>,
    /// The module path the dynamo exporter records in `metadata_props`
    /// (`pkg.torch.onnx.name_scopes`), where it does.
    pub scope: Option<String>,
}

/// The innermost module of `pkg.torch.onnx.name_scopes`, a Python list of
/// cumulative module paths ending in the node's own name:
/// `['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv2d']` → `layer1.0.conv1`.
fn name_scope(value: &str) -> Option<String> {
    let items: Vec<&str> = value.split('\'').skip(1).step_by(2).collect();
    if items.len() < 2 {
        return None;
    }
    Some(items[items.len() - 2].to_string())
}

/// One axis of the declared input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DimDecl {
    Fixed(i64),
    Named(String),
    Unknown,
}

#[derive(Clone, Debug)]
pub struct OnnxModel {
    pub opset: i64,
    pub graph_name: String,
    pub input_name: String,
    pub input_dims: Vec<DimDecl>,
    pub output_name: String,
    pub initializers: HashMap<String, ConstTensor>,
    pub nodes: Vec<Node>,
}

/// Whether `bytes` look like an ONNX model: a protobuf message that starts
/// with ModelProto's `ir_version` (field 1, varint), as every exporter
/// writes it, and decodes as a ModelProto with a graph.
pub fn looks_like_onnx(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x08) && pb::ModelProto::decode(bytes).is_ok_and(|m| m.graph.is_some())
}

fn decode_err(path: &str, detail: impl Into<String>) -> ImportError {
    ImportError::Decode {
        path: path.to_string(),
        detail: detail.into(),
    }
}

fn invalid(path: &str, detail: impl Into<String>, hint: &str) -> ImportError {
    ImportError::Invalid {
        path: path.to_string(),
        detail: detail.into(),
        hint: hint.to_string(),
    }
}

/// Elements of a tensor of `dims`, or an error when a dimension is negative
/// or the count overflows.
fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// The bytes of a tensor kept in an external file (ONNX external data, as
/// PyTorch's dynamo exporter writes the weights: `location` beside the
/// model, `offset`, `length`). The location must stay in the model's
/// directory, and the range inside the file, before anything is read.
fn external_data(t: &pb::TensorProto, name: &str, path: &str) -> Result<Vec<u8>, ImportError> {
    let hint = "keep the external data file (its `location`) beside the .onnx file, or re-save with onnx.save_model(model, path, save_as_external_data=False)";
    let entry = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(k))
            .and_then(|e| e.value.clone())
    };
    let location = entry("location").ok_or_else(|| {
        invalid(
            path,
            format!("tensor `{name}`: external data without a location"),
            hint,
        )
    })?;
    let rel = std::path::Path::new(&location);
    let inside = rel.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !inside {
        return Err(invalid(
            path,
            format!(
                "tensor `{name}`: external data location `{location}` leaves the model's directory"
            ),
            hint,
        ));
    }
    let number = |k: &str| -> Result<Option<u64>, ImportError> {
        entry(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    invalid(
                        path,
                        format!("tensor `{name}`: external data {k} `{v}` is not a number"),
                        hint,
                    )
                })
            })
            .transpose()
    };
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let file = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(rel);
    let cannot = |e: std::io::Error| {
        invalid(
            path,
            format!(
                "tensor `{name}`: cannot read external data `{}`: {e}",
                file.display()
            ),
            hint,
        )
    };
    let mut f = std::fs::File::open(&file).map_err(cannot)?;
    let size = f.metadata().map_err(cannot)?.len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(invalid(
            path,
            format!("tensor `{name}`: external data {offset}..+{length} runs past the end of `{}` ({size} bytes)", file.display()),
            hint,
        ));
    }
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset)).map_err(cannot)?;
    let mut bytes = vec![0u8; length as usize];
    f.read_exact(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

/// The dense values of `t`, checked against its declared shape.
pub fn tensor_of(t: &pb::TensorProto, path: &str) -> Result<ConstTensor, ImportError> {
    use pb::tensor_proto::DataType;
    let name = t.name.clone().unwrap_or_default();
    let bad = |what: String| decode_err(path, format!("tensor `{name}`: {what}"));
    let external = if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
        || !t.external_data.is_empty()
    {
        Some(external_data(t, &name, path)?)
    } else {
        None
    };
    if t.dims.iter().any(|&d| !(0..=1 << 31).contains(&d)) {
        return Err(bad(format!("invalid shape {:?}", t.dims)));
    }
    let n = element_count(&t.dims).ok_or_else(|| bad(format!("invalid shape {:?}", t.dims)))?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let raw = external.as_deref().or(t.raw_data.as_deref());
    let check_raw = |raw: &[u8], size: usize| -> Result<(), ImportError> {
        let want = n.checked_mul(size);
        if want != Some(raw.len()) {
            return Err(bad(format!(
                "shape {:?} needs {} bytes of data, the file has {}",
                t.dims,
                want.map_or("too many".to_string(), |w| w.to_string()),
                raw.len()
            )));
        }
        Ok(())
    };
    let check_len = |len: usize| -> Result<(), ImportError> {
        if len != n {
            return Err(bad(format!(
                "shape {:?} has {n} elements, the file has {len} values",
                t.dims
            )));
        }
        Ok(())
    };
    let dt = t.data_type.unwrap_or(0);
    let data = match DataType::try_from(dt) {
        Ok(DataType::Float) => ConstData::F32(match raw {
            Some(r) => {
                check_raw(r, 4)?;
                r.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            None => {
                check_len(t.float_data.len())?;
                t.float_data.clone()
            }
        }),
        Ok(DataType::Double) => ConstData::F32(match raw {
            Some(r) => {
                check_raw(r, 8)?;
                r.chunks_exact(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect()
            }
            None => {
                check_len(t.double_data.len())?;
                t.double_data.iter().map(|&v| v as f32).collect()
            }
        }),
        Ok(DataType::Float16) => ConstData::F32(match raw {
            Some(r) => {
                check_raw(r, 2)?;
                r.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect()
            }
            None => {
                // float16 values travel as the low 16 bits of int32_data.
                check_len(t.int32_data.len())?;
                t.int32_data
                    .iter()
                    .map(|&v| half::f16::from_bits(v as u16).to_f32())
                    .collect()
            }
        }),
        Ok(DataType::Int64) => ConstData::I64(match raw {
            Some(r) => {
                check_raw(r, 8)?;
                r.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            }
            None => {
                check_len(t.int64_data.len())?;
                t.int64_data.clone()
            }
        }),
        Ok(DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Bool) => {
            let size = match DataType::try_from(dt) {
                Ok(DataType::Int32) => 4,
                Ok(DataType::Int16) => 2,
                _ => 1,
            };
            ConstData::I64(match raw {
                Some(r) => {
                    check_raw(r, size)?;
                    r.chunks_exact(size)
                        .map(|c| match size {
                            4 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                            2 => i16::from_le_bytes([c[0], c[1]]) as i64,
                            _ if dt == DataType::Int8 as i32 => c[0] as i8 as i64,
                            _ => c[0] as i64,
                        })
                        .collect()
                }
                None => {
                    check_len(t.int32_data.len())?;
                    t.int32_data.iter().map(|&v| v as i64).collect()
                }
            })
        }
        _ => {
            return Err(invalid(
                path,
                format!(
                    "tensor `{name}` has element type {} ({dt}), which resnetc does not read",
                    DataType::try_from(dt).map_or("unknown".to_string(), |d| d.as_str_name().to_string())
                ),
                "resnetc imports float32 models (float16 and float64 weights are converted); convert the model with model.float() before exporting",
            ))
        }
    };
    Ok(ConstTensor { dims, data })
}

fn attr_of(a: &pb::AttributeProto, path: &str) -> Result<Attr, ImportError> {
    use pb::attribute_proto::AttributeType as T;
    let ty = a.r#type.and_then(|t| T::try_from(t).ok());
    Ok(match ty {
        Some(T::Int) => Attr::Int(a.i.unwrap_or(0)),
        Some(T::Float) => Attr::Float(a.f.unwrap_or(0.0)),
        Some(T::String) => Attr::Str(String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[])).into()),
        Some(T::Ints) => Attr::Ints(a.ints.clone()),
        Some(T::Floats) => Attr::Floats(a.floats.clone()),
        Some(T::Tensor) => match &a.t {
            Some(t) => Attr::Tensor(tensor_of(t, path)?),
            None => Attr::Other,
        },
        // Old files may leave out the type: infer it from the field set.
        None | Some(T::Undefined) => {
            if let Some(t) = &a.t {
                Attr::Tensor(tensor_of(t, path)?)
            } else if !a.ints.is_empty() {
                Attr::Ints(a.ints.clone())
            } else if !a.floats.is_empty() {
                Attr::Floats(a.floats.clone())
            } else if let Some(s) = &a.s {
                Attr::Str(String::from_utf8_lossy(s).into())
            } else if let Some(i) = a.i {
                Attr::Int(i)
            } else if let Some(f) = a.f {
                Attr::Float(f)
            } else {
                Attr::Other
            }
        }
        _ => Attr::Other,
    })
}

fn dims_of(vi: &pb::ValueInfoProto) -> Option<Vec<DimDecl>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimValue(v)) => DimDecl::Fixed(*v),
                Some(Value::DimParam(p)) if !p.is_empty() => DimDecl::Named(p.clone()),
                _ => DimDecl::Unknown,
            })
            .collect(),
    )
}

/// Decodes and checks the model bytes. `path` names the file in errors.
pub fn read(bytes: &[u8], path: &str) -> Result<OnnxModel, ImportError> {
    let m = pb::ModelProto::decode(bytes).map_err(|e| decode_err(path, e.to_string()))?;
    let opset = m
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .ok_or_else(|| {
            decode_err(
                path,
                "no ONNX operator set is imported (opset_import is empty)",
            )
        })?;
    let g = m
        .graph
        .ok_or_else(|| decode_err(path, "the model has no graph"))?;
    if !(7..=23).contains(&opset) {
        return Err(invalid(
            path,
            format!("the model uses ONNX opset {opset}"),
            "resnetc imports opsets 11 to 21 (7 to 23 are read on a best-effort basis); re-export with torch.onnx.export(..., opset_version=17)",
        ));
    }
    let mut initializers = HashMap::new();
    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        initializers.insert(name, tensor_of(t, path)?);
    }
    if !g.sparse_initializer.is_empty() {
        return Err(invalid(
            path,
            "the model has sparse initializers",
            "resnetc reads dense weights only; densify them before exporting",
        ));
    }
    // Old exporters list the initializers among the inputs too.
    let inputs: Vec<&pb::ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !initializers.contains_key(i.name.as_deref().unwrap_or("")))
        .collect();
    if inputs.len() != 1 {
        let names: Vec<&str> = inputs
            .iter()
            .map(|i| i.name.as_deref().unwrap_or("?"))
            .collect();
        return Err(invalid(
            path,
            format!(
                "the model takes {} inputs ({}); a resnetc model takes exactly one image tensor",
                inputs.len(),
                names.join(", ")
            ),
            "export the model with a single input tensor",
        ));
    }
    if g.output.len() != 1 {
        return Err(invalid(
            path,
            format!(
                "the model has {} outputs; a resnetc model has exactly one",
                g.output.len()
            ),
            "export the model with a single output tensor",
        ));
    }
    let input = inputs[0];
    let input_name = input.name.clone().unwrap_or_default();
    if let Some(pb::type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    {
        if t.elem_type
            .is_some_and(|e| e != pb::tensor_proto::DataType::Float as i32)
        {
            return Err(invalid(
                path,
                format!("input `{input_name}` is not float32"),
                "resnetc models take float32 images; export with a float32 example input",
            ));
        }
    }
    let input_dims = dims_of(input).unwrap_or_default();
    let mut nodes = Vec::with_capacity(g.node.len());
    for (k, n) in g.node.iter().enumerate() {
        let mut attrs = HashMap::new();
        for a in &n.attribute {
            attrs.insert(a.name.clone().unwrap_or_default(), attr_of(a, path)?);
        }
        let op_type = n.op_type.clone().unwrap_or_default();
        nodes.push(Node {
            name: n
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("{op_type}#{k}")),
            op_type,
            domain: n.domain.clone().unwrap_or_default(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
            scope: n
                .metadata_props
                .iter()
                .find(|p| p.key.as_deref() == Some("pkg.torch.onnx.name_scopes"))
                .and_then(|p| name_scope(p.value.as_deref()?)),
        });
    }
    Ok(OnnxModel {
        opset,
        graph_name: g.name.unwrap_or_default(),
        input_name,
        input_dims,
        output_name: g.output[0].name.clone().unwrap_or_default(),
        initializers,
        nodes,
    })
}
