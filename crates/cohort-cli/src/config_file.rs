//! `cohort serve --config FILE`: the flags of `serve` from a TOML file, the way deployments
//! configure services (a ConfigMap mounted as a file, say).
//!
//! Each key is a flag's long name (`max-staleness` or `max_staleness`), each value what the flag
//! takes: a string, a number, `true` for a switch, an array for a list (`seeds`). Precedence is
//! the usual: the command line, then the environment (`COHORT_<FLAG>`), then the file, then the
//! defaults. The file's entries become flags placed before the command line's, so clap checks
//! them like any other (an unknown key is an unknown flag, reported with the file's name).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The subcommand whose flags a file may hold.
const SUBCOMMAND: &str = "serve";
const FLAG: &str = "--config";
const ENV: &str = "COHORT_CONFIG";

/// `args` (the whole command line) with the flags of the `--config` file (or `$COHORT_CONFIG`)
/// inserted after the subcommand, except those the command line or `env` already sets.
pub(crate) fn expand(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Vec<OsString>> {
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new(SUBCOMMAND)) {
        return Ok(args);
    }
    let Some(path) = config_path(&args[2..]).or_else(|| env(ENV).map(PathBuf::from)) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let flags = flags(&text, &args[2..], &env)
        .with_context(|| format!("in the config file {}", path.display()))?;
    let mut expanded = args[..2].to_vec();
    expanded.extend(flags);
    expanded.extend_from_slice(&args[2..]);
    Ok(expanded)
}

/// The value of `--config PATH` or `--config=PATH` on the command line.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == FLAG {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(Path::new(path).to_owned());
        }
    }
    None
}

/// The flags `text` (TOML) sets that neither `given` (the command line) nor `env` does.
fn flags(
    text: &str,
    given: &[OsString],
    env: &impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Vec<OsString>> {
    let table: toml::Table = toml::from_str(text)?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        if name == "config" {
            bail!("a config file cannot name another one");
        }
        let flag = format!("--{name}");
        let on_command_line = given.iter().any(|arg| {
            let arg = arg.to_string_lossy();
            arg == flag || arg.starts_with(&format!("{flag}="))
        });
        let env_name = format!("COHORT_{}", name.to_uppercase().replace('-', "_"));
        if on_command_line || env(&env_name).is_some() {
            continue;
        }
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(true) => {
                flags.push(flag.into());
                continue;
            }
            // A switch is off unless given.
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(text) => Ok(text.clone()),
                    other => bail!(
                        "{key}: list items must be strings, not {}",
                        other.type_str()
                    ),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => bail!("{key}: a {} is not a flag's value", other.type_str()),
        };
        flags.push(format!("{flag}={text}").into());
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    const CONFIG: &str = r#"
        name = "a"
        max_staleness = "2s"
        users = 50
        seeds = ["10.0.0.1:7001", "10.0.0.2:7001"]
        insecure = true
        advertise = "10.0.0.9:7001"
    "#;

    #[test]
    fn the_command_line_beats_the_environment_which_beats_the_file() {
        let config = file(CONFIG);
        let path = config.path().to_str().unwrap();
        let env = |name: &str| (name == "COHORT_ADVERTISE").then(|| OsString::from("10.0.0.8:1"));
        let expanded = expand(os(&["cohort", "serve", "--config", path, "--name=b"]), env).unwrap();
        let expected = os(&[
            "cohort",
            "serve",
            "--insecure",
            "--max-staleness=2s",
            "--seeds=10.0.0.1:7001,10.0.0.2:7001",
            "--users=50",
            "--config",
            path,
            "--name=b",
        ]);
        assert_eq!(expanded, expected);
    }

    #[test]
    fn the_file_can_come_from_the_environment() {
        let config = file("users = 7");
        let path = OsString::from(config.path());
        let env = |name: &str| (name == ENV).then(|| path.clone());
        let expanded = expand(os(&["cohort", "serve"]), env).unwrap();
        assert_eq!(expanded, os(&["cohort", "serve", "--users=7"]));
    }

    #[test]
    fn other_subcommands_and_no_file_leave_the_arguments_alone() {
        let none = |_: &str| None;
        for args in [
            os(&["cohort", "demo", "--config", "x.toml"]),
            os(&["cohort", "serve", "--name", "a"]),
        ] {
            assert_eq!(expand(args.clone(), none).unwrap(), args);
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let none = |_: &str| None;
        for (text, says) in [
            ("users = ", "config file"),
            ("seeds = [1, 2]", "list items must be strings"),
            ("db = { url = \"x\" }", "is not a flag's value"),
            ("config = \"other.toml\"", "cannot name another one"),
        ] {
            let config = file(text);
            let path = config.path().to_str().unwrap();
            let error = expand(os(&["cohort", "serve", "--config", path]), none).unwrap_err();
            let error = format!("{error:#}");
            assert!(error.contains(says), "{text:?}: {error}");
            assert!(error.contains(path), "{error}");
        }
        let missing = expand(os(&["cohort", "serve", "--config=/no/such.toml"]), none);
        assert!(format!("{:#}", missing.unwrap_err()).contains("/no/such.toml"));
    }
}
