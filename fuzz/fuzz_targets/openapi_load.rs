//! OpenAPI documents (YAML or JSON, 3.0/3.1, local `$ref`s): loading never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Spec::load reads a file (refs resolve against its folder): one file per process.
    thread_local! {
        static DIR: std::path::PathBuf = {
            let dir = std::env::temp_dir().join(format!("clientele-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            dir
        };
    }
    DIR.with(|dir| {
        let path = dir.join("spec.yaml");
        if std::fs::write(&path, data).is_ok() {
            let _ = clientele_contract::Spec::load(&path);
        }
    });
});
