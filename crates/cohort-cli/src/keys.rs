//! Cluster key files: `cohort keygen` writes one key, `--cluster-key-file` reads a ring.

use std::path::Path;

use anyhow::Context;
use cohort::ClusterKey;

/// Reads a key file: one key per line (64 hexadecimal digits), the first the primary; blank lines
/// and lines starting with `#` are skipped.
pub(crate) fn read_key_file(path: &Path) -> anyhow::Result<Vec<ClusterKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the cluster key file {}", path.display()))?;
    parse_keys(&text).with_context(|| format!("in the cluster key file {}", path.display()))
}

fn parse_keys(text: &str) -> anyhow::Result<Vec<ClusterKey>> {
    let keys = text
        .lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| line.parse().with_context(|| format!("line {n}")))
        .collect::<anyhow::Result<Vec<ClusterKey>>>()?;
    anyhow::ensure!(!keys.is_empty(), "no key in it");
    Ok(keys)
}

/// `cohort keygen`: prints a new cluster key.
pub(crate) fn keygen() -> bool {
    println!("{}", ClusterKey::generate().to_hex());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_reads_in_order_skipping_comments() {
        let (first, second) = (ClusterKey::generate(), ClusterKey::generate());
        let text = format!(
            "# rotated 2026-11\n{}\n\n  {}  \n",
            first.to_hex(),
            second.to_hex()
        );
        assert_eq!(parse_keys(&text).unwrap(), vec![first, second]);
    }

    #[test]
    fn bad_files_say_where() {
        let error = format!("{:#}", parse_keys("# only a comment\n").unwrap_err());
        assert!(error.contains("no key"), "{error}");
        let error = format!("{:#}", parse_keys("\nnot-a-key\n").unwrap_err());
        assert!(
            error.contains("line 2") && error.contains("64 hexadecimal"),
            "{error}"
        );
    }
}
