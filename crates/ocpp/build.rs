//! Embeds every official OCPP JSON schema into the binary, so validators can be
//! compiled at start without reading files at run time.

use std::{env, fs, path::Path};

fn main() {
    // Only the `schemas` feature's validator reads the table; without it, skip the 2 MB.
    if env::var_os("CARGO_FEATURE_SCHEMAS").is_none() {
        println!("cargo:rerun-if-changed=build.rs");
        return;
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let schema_root = Path::new(&manifest_dir).join("schemas");
    println!("cargo:rerun-if-changed=schemas");

    let mut entries = Vec::new();
    for version_dir in ["v16", "v201", "v21"] {
        let dir = schema_root.join(version_dir);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        for path in files {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("schema file names are UTF-8")
                .to_owned();
            entries.push(format!(
                "    ({version_dir:?}, {stem:?}, include_str!({:?})),\n",
                path.display().to_string()
            ));
        }
    }

    let generated = format!(
        "/// (version folder, file stem, schema text) for every embedded schema.\n\
         pub(crate) static EMBEDDED_SCHEMAS: &[(&str, &str, &str)] = &[\n{}];\n",
        entries.concat()
    );
    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("schemas.rs");
    fs::write(out, generated).expect("writing generated schema table");
}
