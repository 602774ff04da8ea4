//! Writes the CRDs of `cilia-api` to `crds/` and to the chart's copy in
//! `charts/cilia/files/crds/`, one file per CRD. Run from anywhere in the repository:
//! `cargo run -p cilia-api --bin crdgen`.

use std::path::{Path, PathBuf};
use std::{fs, io};

fn repo_root() -> PathBuf {
    // crates/cilia-api → repository root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crate lives two levels below the repository root")
        .to_path_buf()
}

fn write_dir(dir: &Path, files: &[(String, String)]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    // Remove CRD files that are no longer generated, so the directory mirrors the types.
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".yaml") && !files.iter().any(|(f, _)| f == name) {
            fs::remove_file(&path)?;
        }
    }
    for (name, yaml) in files {
        fs::write(dir.join(name), yaml)?;
        println!("wrote {}", dir.join(name).display());
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let root = repo_root();
    let files = cilia_api::crd::rendered();
    write_dir(&root.join(cilia_api::crd::CRD_DIR), &files)?;
    write_dir(&root.join(cilia_api::crd::CHART_CRD_DIR), &files)?;
    Ok(())
}
