//! Where a `use` path leads: the standard library inside the binary
//! (`use "std/resnet"`), the directory of the file that uses it, then the
//! search path (`-L DIR`, `RESNETC_PATH`).

use std::path::{Path, PathBuf};

/// The environment variable that adds directories to the search path.
pub const PATH_VAR: &str = "RESNETC_PATH";

/// The standard library: `use "std/NAME"` (or `"std/NAME.res"`), the
/// blocks of examples/lib/ compiled into the binary.
pub const STD: &[(&str, &str)] = &[
    ("resnet", include_str!("../../examples/lib/resnet.res")),
    ("densenet", include_str!("../../examples/lib/densenet.res")),
    ("unet", include_str!("../../examples/lib/unet.res")),
    ("cifar", include_str!("../../examples/lib/cifar.res")),
];

/// A resolved `use`.
#[derive(Clone, Debug)]
pub enum Found {
    Std {
        name: &'static str,
        text: &'static str,
    },
    /// A file, which may not exist (the read says so).
    File(PathBuf),
}

impl Found {
    /// Identity of the file, so each is read once.
    pub fn key(&self) -> PathBuf {
        match self {
            Found::Std { name, .. } => PathBuf::from(format!("<std>/{name}")),
            Found::File(p) => p.canonicalize().unwrap_or_else(|_| p.clone()),
        }
    }

    /// The name diagnostics show.
    pub fn display(&self) -> String {
        match self {
            Found::Std { name, .. } => format!("std/{name}.res"),
            Found::File(p) => p.display().to_string(),
        }
    }
}

/// The standard library file `path` names, if it names one.
pub fn std_file(path: &str) -> Option<(&'static str, &'static str)> {
    let name = path.strip_prefix("std/")?;
    let name = name.strip_suffix(".res").unwrap_or(name);
    STD.iter().find(|(n, _)| *n == name).copied()
}

/// Resolves `path` as written in a `use` of a file in `dir`.
pub fn resolve(path: &str, dir: Option<&Path>, search: &[PathBuf]) -> Found {
    if let Some((name, text)) = std_file(path) {
        return Found::Std { name, text };
    }
    let local = dir.unwrap_or(Path::new("")).join(path);
    if local.exists() || Path::new(path).is_absolute() {
        return Found::File(local);
    }
    for d in search {
        let p = d.join(path);
        if p.exists() {
            return Found::File(p);
        }
    }
    Found::File(local)
}

/// The hint of a `use` that found nothing.
pub fn not_found_help(search: &[PathBuf]) -> String {
    let names: Vec<String> = STD.iter().map(|(n, _)| format!("\"std/{n}\"")).collect();
    let searched = if search.is_empty() {
        format!("no search path is set (-L DIR or {PATH_VAR})")
    } else {
        format!(
            "searched then: {}",
            search
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "`use` paths are relative to the file that contains them; {searched}; the standard library is {}",
        names.join(", ")
    )
}
