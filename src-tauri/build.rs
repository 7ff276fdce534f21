//! The app's configuration is the repository's root `tauri.conf.json`.

fn main() {
    tauri_build::try_build(tauri_build::Attributes::new().config_path("../tauri.conf.json"))
        .expect("building the Tauri context from ../tauri.conf.json");
}
