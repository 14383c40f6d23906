//! Command-line and environment configuration.
//!
//! Every flag `--some-flag` has an environment twin `PAPO_SOME_FLAG`; a flag on
//! the command line wins over the environment, which wins over the default.
//! The parser is small and table-driven: each flag is one constant holding
//! its name, value placeholder, default and help (`flags`), code reads a
//! value through that constant (a misspelt flag does not compile) into the
//! typed settings each part takes (`resolve`), and `--help` is generated
//! from the same table that parses.

mod flags;
mod resolve;
mod units;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

pub use flags::*;
pub use resolve::*;
pub use units::{parse_duration, parse_size};

/// What a flag's value is, checked when the command line is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any text: an address, a URL, a name, a word read by the command.
    Text,
    /// A whole number.
    Count,
    /// A byte size: `4096`, `64KiB`, `4MiB`.
    Size,
    /// A duration: `250ms`, `5s`, `2m`.
    Duration,
    /// On or off; takes no value.
    Switch,
    /// Repeatable text, collected into a list.
    List,
}

/// One flag of a subcommand: everything about it, written once.
#[derive(Debug)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    /// Placeholder for the value in `--help` (`ADDR`, `N`…); empty for a switch.
    pub value: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

impl Flag {
    const fn new(
        name: &'static str,
        kind: Kind,
        value: &'static str,
        default: Option<&'static str>,
        help: &'static str,
    ) -> Flag {
        Flag {
            name,
            kind,
            value,
            default,
            help,
        }
    }

    pub const fn text(
        name: &'static str,
        value: &'static str,
        default: &'static str,
        help: &'static str,
    ) -> Flag {
        Flag::new(name, Kind::Text, value, Some(default), help)
    }

    pub const fn count(
        name: &'static str,
        value: &'static str,
        default: &'static str,
        help: &'static str,
    ) -> Flag {
        Flag::new(name, Kind::Count, value, Some(default), help)
    }

    pub const fn size(
        name: &'static str,
        value: &'static str,
        default: &'static str,
        help: &'static str,
    ) -> Flag {
        Flag::new(name, Kind::Size, value, Some(default), help)
    }

    pub const fn duration(name: &'static str, default: &'static str, help: &'static str) -> Flag {
        Flag::new(name, Kind::Duration, "DURATION", Some(default), help)
    }

    /// An on/off flag, off by default.
    pub const fn switch(name: &'static str, help: &'static str) -> Flag {
        Flag::new(name, Kind::Switch, "", None, help)
    }

    /// Text with no default: absent unless given.
    pub const fn optional(name: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag::new(name, Kind::Text, value, None, help)
    }

    /// A repeatable flag collecting a comma-separated list, empty by default.
    pub const fn list(name: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag::new(name, Kind::List, value, None, help)
    }

    /// Checks a value against the flag's kind.
    fn check(&self, value: &str) -> Result<(), String> {
        match self.kind {
            Kind::Count => value
                .trim()
                .parse::<u64>()
                .map(drop)
                .map_err(|_| "expected a whole number".to_owned()),
            Kind::Size => parse_size(value).map(drop),
            Kind::Duration => parse_duration(value).map(drop),
            Kind::Text | Kind::Switch | Kind::List => Ok(()),
        }
    }
}

/// A subcommand: its name, one-line summary and flags.
pub struct Command {
    pub name: &'static str,
    pub about: &'static str,
    pub flags: &'static [&'static Flag],
}

/// Why parsing stopped: the user asked for help, or got something wrong.
#[derive(Debug, PartialEq)]
pub enum CliError {
    Help(String),
    Usage(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help(text) | CliError::Usage(text) => f.write_str(text),
        }
    }
}

/// The environment variable twin of a flag: `ws-addr` -> `PAPO_WS_ADDR`.
pub fn env_name(flag: &str) -> String {
    format!("PAPO_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Resolved flag values of one subcommand, as strings until asked for a type.
#[derive(Debug)]
pub struct Values {
    command: &'static str,
    /// The command's flags: asking for another one is a bug, reported as such.
    flags: &'static [&'static Flag],
    values: HashMap<&'static str, String>,
}

impl Values {
    /// A flag's value, if it has one; asking for a flag of another command,
    /// or as another kind than its own, is a bug, reported as such.
    fn raw(&self, flag: &Flag, kinds: &[Kind]) -> Result<Option<&str>, CliError> {
        let internal = |why: String| Err(CliError::Usage(format!("internal error: {why}")));
        if !self.flags.iter().any(|f| f.name == flag.name) {
            return internal(format!(
                "--{} is not a flag of 'papo {}'",
                flag.name, self.command
            ));
        }
        if !kinds.contains(&flag.kind) {
            return internal(format!("--{} is not read as {:?}", flag.name, flag.kind));
        }
        Ok(self.values.get(flag.name).map(String::as_str))
    }

    /// The value of a flag that has a default, or was given.
    fn given(&self, flag: &Flag, kinds: &[Kind]) -> Result<&str, CliError> {
        Ok(self.raw(flag, kinds)?.unwrap_or_default())
    }

    fn invalid(&self, flag: &Flag, value: &str, why: impl fmt::Display) -> CliError {
        CliError::Usage(format!(
            "invalid value '{value}' for --{} ({}): {why}",
            flag.name,
            env_name(flag.name)
        ))
        .in_command(self.command)
    }

    pub fn string(&self, flag: &Flag) -> Result<String, CliError> {
        self.given(flag, &[Kind::Text]).map(str::to_owned)
    }

    /// An [`Flag::optional`] flag's value, if it was given (and not empty).
    pub fn optional(&self, flag: &Flag) -> Result<Option<String>, CliError> {
        let value = self.raw(flag, &[Kind::Text])?;
        Ok(value.filter(|v| !v.is_empty()).map(str::to_owned))
    }

    pub fn switch(&self, flag: &Flag) -> Result<bool, CliError> {
        Ok(self.raw(flag, &[Kind::Switch])?.is_some())
    }

    /// A repeatable flag's values, split on commas, empty items dropped.
    pub fn list(&self, flag: &Flag) -> Result<Vec<String>, CliError> {
        Ok(self
            .given(flag, &[Kind::List])?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// A count, or text read as `T` (an enum, say).
    pub fn parsed<T: std::str::FromStr>(&self, flag: &Flag) -> Result<T, CliError>
    where
        T::Err: fmt::Display,
    {
        let raw = self.given(flag, &[Kind::Count, Kind::Text])?;
        raw.trim().parse().map_err(|e| self.invalid(flag, raw, e))
    }

    pub fn size(&self, flag: &Flag) -> Result<usize, CliError> {
        let raw = self.given(flag, &[Kind::Size])?;
        parse_size(raw).map_err(|e| self.invalid(flag, raw, e))
    }

    pub fn duration(&self, flag: &Flag) -> Result<Duration, CliError> {
        let raw = self.given(flag, &[Kind::Duration])?;
        parse_duration(raw).map_err(|e| self.invalid(flag, raw, e))
    }

    /// A duration where zero means off: `None`.
    pub fn duration_or_off(&self, flag: &Flag) -> Result<Option<Duration>, CliError> {
        Ok(Some(self.duration(flag)?).filter(|d| !d.is_zero()))
    }
}

impl CliError {
    /// A usage error, with where to find the command's usage.
    pub fn in_command(self, command: &str) -> CliError {
        match self {
            CliError::Usage(msg) => {
                CliError::Usage(format!("{msg}\nRun 'papo {command} --help' for usage."))
            }
            help => help,
        }
    }
}

/// Parses `args` (after the subcommand name) against `cmd`'s flags, filling
/// the gaps from the environment (`env`) and then from the defaults.
pub fn parse(
    cmd: &Command,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Values, CliError> {
    let usage = |msg: String| CliError::Usage(msg).in_command(cmd.name);
    let mut values = HashMap::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "-h" || arg == "--help" {
            return Err(CliError::Help(help(cmd)));
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(usage(format!("unexpected argument '{arg}'")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        let Some(flag) = cmd.flags.iter().find(|f| f.name == name) else {
            return Err(usage(format!("unknown flag '--{name}'")));
        };
        let value = match (flag.kind, inline) {
            (Kind::Switch, None) => String::new(),
            (Kind::Switch, Some(_)) => return Err(usage(format!("--{name} takes no value"))),
            (_, Some(value)) => value,
            (_, None) => match rest.next() {
                Some(value) => value.clone(),
                None => return Err(usage(format!("--{name} needs a value"))),
            },
        };
        match values.get_mut(flag.name) {
            Some(list) if flag.kind == Kind::List => {
                let list: &mut String = list;
                list.push(',');
                list.push_str(&value);
            }
            _ => {
                values.insert(flag.name, value);
            }
        }
    }
    for flag in cmd.flags {
        if values.contains_key(flag.name) {
            continue;
        }
        let var = env_name(flag.name);
        let from_env = env(&var).filter(|v| !v.is_empty());
        match (flag.kind, from_env) {
            (Kind::Switch, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => {
                    values.insert(flag.name, String::new());
                }
                "0" | "false" | "no" | "off" => {}
                _ => return Err(usage(format!("{var}={v}: expected true or false"))),
            },
            (_, Some(v)) => {
                values.insert(flag.name, v);
            }
            (_, None) => {
                if let Some(default) = flag.default {
                    values.insert(flag.name, default.to_owned());
                }
            }
        }
    }
    let values = Values {
        command: cmd.name,
        flags: cmd.flags,
        values,
    };
    // Every value is checked against its flag's kind before anything runs.
    for flag in cmd.flags {
        if let Some(value) = values.values.get(flag.name) {
            flag.check(value)
                .map_err(|why| values.invalid(flag, value, why))?;
        }
    }
    Ok(values)
}

/// The `--help` text of a subcommand, generated from its flag table.
pub fn help(cmd: &Command) -> String {
    let mut out = format!(
        "{}\n\nUsage: papo {} [FLAGS]\n\nFlags:\n",
        cmd.about, cmd.name
    );
    let left = |flag: &Flag| match flag.kind {
        Kind::Switch => format!("--{}", flag.name),
        _ => format!("--{} {}", flag.name, flag.value),
    };
    let width = cmd.flags.iter().map(|f| left(f).len()).max().unwrap_or(0);
    for flag in cmd.flags {
        out.push_str(&format!("  {:<width$}  {}\n", left(flag), flag.help));
        let mut detail = format!("env {}", env_name(flag.name));
        if flag.kind == Kind::List {
            detail.push_str(", repeatable, comma-separated in the env");
        }
        if let Some(default) = flag.default {
            detail.push_str(&format!(", default {default}"));
        }
        out.push_str(&format!("  {:<width$}  [{detail}]\n", ""));
    }
    out.push_str(&format!("  {:<width$}  Print this help\n", "-h, --help"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Flag = Flag::text("ws-addr", "ADDR", "127.0.0.1:8080", "Where to listen");
    const NO_WS: Flag = Flag::switch("no-ws", "Do not listen");
    const COUNT: Flag = Flag::count("count", "N", "5", "How many");
    const WAIT: Flag = Flag::duration("wait", "1s", "How long");
    const ORIGIN: Flag = Flag::list("origin", "ORIGIN", "Allowed origins");
    const DEMO: Command = Command {
        name: "demo",
        about: "A demo command.",
        flags: &[&ADDR, &NO_WS, &COUNT, &ORIGIN, &WAIT],
    };

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_then_env_then_flags() {
        let v = parse(&DEMO, &[], no_env).unwrap();
        assert_eq!(v.string(&ADDR).unwrap(), "127.0.0.1:8080");
        assert!(!v.switch(&NO_WS).unwrap());

        let env = |k: &str| match k {
            "PAPO_WS_ADDR" => Some("0.0.0.0:1".to_owned()),
            "PAPO_NO_WS" => Some("true".to_owned()),
            _ => None,
        };
        let v = parse(&DEMO, &[], env).unwrap();
        assert_eq!(v.string(&ADDR).unwrap(), "0.0.0.0:1");
        assert!(v.switch(&NO_WS).unwrap());

        let v = parse(&DEMO, &args(&["--ws-addr", "[::1]:2", "--count=7"]), env).unwrap();
        assert_eq!(v.string(&ADDR).unwrap(), "[::1]:2");
        assert_eq!(v.parsed::<u32>(&COUNT).unwrap(), 7);
    }

    #[test]
    fn repeatable_flags_collect_lists() {
        assert!(parse(&DEMO, &[], no_env)
            .unwrap()
            .list(&ORIGIN)
            .unwrap()
            .is_empty());
        let v = parse(&DEMO, &args(&["--origin", "a", "--origin=b,c"]), no_env).unwrap();
        assert_eq!(v.list(&ORIGIN).unwrap(), ["a", "b", "c"]);
        let env = |k: &str| (k == "PAPO_ORIGIN").then(|| "x, y".to_owned());
        assert_eq!(
            parse(&DEMO, &[], env).unwrap().list(&ORIGIN).unwrap(),
            ["x", "y"]
        );
        // A single-valued flag given twice keeps the last value.
        let v = parse(&DEMO, &args(&["--count", "1", "--count", "2"]), no_env).unwrap();
        assert_eq!(v.parsed::<u32>(&COUNT).unwrap(), 2);
    }

    #[test]
    fn usage_errors_name_the_flag_and_its_env_twin() {
        // A value of the wrong kind is refused when parsing, before anything runs.
        let err = parse(&DEMO, &args(&["--count", "many"]), no_env).unwrap_err();
        let CliError::Usage(msg) = err else {
            panic!("expected a usage error")
        };
        assert!(
            msg.contains("--count") && msg.contains("PAPO_COUNT"),
            "{msg}"
        );

        for bad in [&["--nope"][..], &["--ws-addr"], &["stray"], &["--no-ws=1"]] {
            assert!(matches!(
                parse(&DEMO, &args(bad), no_env),
                Err(CliError::Usage(_))
            ));
        }
        let env = |_: &str| Some("maybe".to_owned());
        assert!(matches!(parse(&DEMO, &[], env), Err(CliError::Usage(_))));
        let env = |k: &str| (k == "PAPO_WAIT").then(|| "soon".to_owned());
        assert!(
            matches!(parse(&DEMO, &[], env), Err(CliError::Usage(m)) if m.contains("PAPO_WAIT"))
        );
    }

    #[test]
    fn a_flag_of_another_command_is_an_error_not_a_default() {
        const OTHER: Flag = Flag::count("other", "N", "1", "Not a flag of DEMO");
        let v = parse(&DEMO, &[], no_env).unwrap();
        assert!(matches!(v.parsed::<u32>(&OTHER), Err(CliError::Usage(_))));
        assert!(v.switch(&OTHER).is_err());
        // Nor is reading a flag as another kind than its own.
        assert!(v.duration(&COUNT).is_err());
        assert!(v.string(&WAIT).is_err());
        assert_eq!(v.duration(&WAIT), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn help_lists_every_flag_with_env_and_default() {
        let Err(CliError::Help(text)) = parse(&DEMO, &args(&["--help"]), no_env) else {
            panic!("expected help")
        };
        for needle in [
            "--ws-addr ADDR",
            "PAPO_WS_ADDR",
            "default 127.0.0.1:8080",
            "--no-ws",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
