//! `demo`: placeholder until the sandbox lands.
use anyhow::Result;
use std::path::Path;
pub async fn run(_dir: &Path, _keep: bool) -> Result<String> {
    anyhow::bail!("not yet")
}
