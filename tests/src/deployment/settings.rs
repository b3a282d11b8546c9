//! What the deployment passes to each binary, read from `terraform/` (container
//! definitions, output maps, the hosts' user-data) and `ami/` (`hostd.env`, the
//! systemd unit), with a small indentation-based reader for fmt-ed HCL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use berth_wire::ecs as wire_ecs;

use super::binaries::{Binary, env_name_prefix};
// --- the repository ------------------------------------------------------------------

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

pub fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') {
                    todo.push(p);
                }
            } else if name.ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// --- the deployment ----------------------------------------------------------------

/// One environment variable the deployment sets.
#[derive(Debug, Clone)]
pub struct Setting {
    pub name: String,
    /// As written: an HCL expression, or an env-file / shell value.
    pub value: String,
    /// Which of Berth's binaries reads it; `None` for anything else (the backend).
    pub binary: Option<Binary>,
    /// Where it goes: `container scheduler`, `/etc/berth/hostd.env`, `output scheduler_secrets`.
    pub consumer: String,
    /// `file:line`.
    pub at: String,
}

#[derive(Debug, Default)]
pub struct Deployment {
    pub settings: Vec<Setting>,
    /// Flags on the hostd unit's ExecStart (with the unit file:line).
    pub hostd_flags: Vec<(String, String)>,
    /// `BERTH_…` in code this reader does not understand: each must be taught to it.
    pub unaccounted: Vec<String>,
}

impl Deployment {
    pub fn of(&self, binary: Binary) -> impl Iterator<Item = &Setting> {
        self.settings
            .iter()
            .filter(move |s| s.binary == Some(binary))
    }

    /// Settings of one container of a task definition.
    pub fn container(&self, name: &str) -> Vec<&Setting> {
        let want = format!("container {name}");
        self.settings
            .iter()
            .filter(|s| s.consumer == want)
            .collect()
    }

    /// What hostd's environment file holds after boot: the AMI's file plus user-data.
    pub fn hostd_env(&self) -> BTreeMap<String, &Setting> {
        self.settings
            .iter()
            .filter(|s| s.binary == Some(Binary::Hostd) && s.consumer.ends_with("hostd.env"))
            .map(|s| (s.name.clone(), s))
            .collect()
    }
}

/// Which binary a container definition runs, by its container name.
pub fn container_binary(name: &str) -> Result<Option<Binary>, String> {
    match name {
        "scheduler" => Ok(Some(Binary::Scheduler)),
        n if n == wire_ecs::WORKSPACE_CONTAINER => Ok(Some(Binary::Agent)),
        n if n == wire_ecs::PROXY_CONTAINER => Ok(Some(Binary::Proxy)),
        // The operator's backend (terraform/modules/backend): not built here, so its
        // settings are not checked against a binary.
        "backend" => Ok(None),
        other => Err(format!(
            "container `{other}` runs none of the binaries deploy_flags.rs knows; \
             map it in container_binary()"
        )),
    }
}

pub fn has_berth_token(s: &str) -> bool {
    s.match_indices("BERTH_")
        .any(|(i, _)| i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric())
}

pub fn berth_tokens(s: &str) -> Vec<String> {
    s.match_indices("BERTH_")
        .filter(|(i, _)| *i == 0 || !s.as_bytes()[*i - 1].is_ascii_alphanumeric())
        .map(|(i, _)| env_name_prefix(&s[i..]).to_owned())
        .collect()
}

/// A line of HCL, without its comment.
pub fn hcl_code(line: &str) -> &str {
    let mut in_str = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            '/' if !in_str && line[i..].starts_with("//") => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// `"text"` without interpolation → text.
pub fn hcl_literal(expr: &str) -> Option<String> {
    let e = expr.trim();
    let inner = e.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains("${") || inner.contains('"') && !inner.contains("\\\"") {
        return None;
    }
    Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// One fmt-ed HCL file as a tree of blocks, by indentation: an opener is a line
/// ending in `{`, `[` or `(`, closed by the next line at its indentation that starts
/// with a closer.
pub struct Hcl {
    pub lines: Vec<String>,
    pub indent: Vec<usize>,
    /// Innermost-last openers enclosing each line (not the line itself).
    pub ancestors: Vec<Vec<usize>>,
    /// Opener → its closing line.
    pub close: BTreeMap<usize, usize>,
}

impl Hcl {
    pub fn parse(text: &str) -> Hcl {
        let lines: Vec<String> = text
            .lines()
            .map(|l| hcl_code(l).trim_end().to_owned())
            .collect();
        let indent: Vec<usize> = lines
            .iter()
            .map(|l| l.len() - l.trim_start().len())
            .collect();
        let mut stack: Vec<usize> = Vec::new();
        let mut ancestors = Vec::with_capacity(lines.len());
        let mut close = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if t.starts_with(['}', ']', ')'])
                && let Some(&top) = stack.last()
                && indent[top] == indent[i]
            {
                stack.pop();
                close.insert(top, i);
            }
            ancestors.push(stack.clone());
            if t.ends_with(['{', '[', '(']) {
                stack.push(i);
            }
        }
        Hcl {
            lines,
            indent,
            ancestors,
            close,
        }
    }

    /// `key = value` lines directly inside the block opened at `open`.
    pub fn children(&self, open: usize) -> Vec<(usize, String, String)> {
        let end = self.close.get(&open).copied().unwrap_or(self.lines.len());
        let want = self.indent[open] + 2;
        (open + 1..end)
            .filter(|&i| self.indent[i] == want)
            .filter_map(|i| {
                let (k, v) = self.lines[i].trim().split_once('=')?;
                let k = k.trim();
                (!k.is_empty() && !k.contains(' ')).then(|| (i, k.to_owned(), v.trim().to_owned()))
            })
            .collect()
    }

    pub fn child(&self, open: usize, key: &str) -> Option<String> {
        self.children(open)
            .into_iter()
            .find(|(_, k, _)| k == key)
            .map(|(_, _, v)| v)
    }

    /// The key an opener line assigns (`environment = [` → `environment`).
    pub fn key_of(&self, open: usize) -> Option<String> {
        let (k, _) = self.lines[open].trim().split_once('=')?;
        Some(k.trim().to_owned())
    }

    /// Openers that define a container: direct `name = "…"` and `image = …`.
    pub fn containers(&self) -> Vec<(usize, String)> {
        self.close
            .keys()
            .filter(|&&o| self.lines[o].ends_with('{'))
            .filter_map(|&o| {
                let name = hcl_literal(&self.child(o, "name")?)?;
                self.child(o, "image")?;
                Some((o, name))
            })
            .collect()
    }
}

/// `{ name = "N", value = EXPR }` (or `valueFrom`) on one line.
pub fn inline_entry(line: &str) -> Option<(String, String)> {
    let t = line.trim().trim_end_matches(',');
    let body = t.strip_prefix('{')?.strip_suffix('}')?.trim();
    let after_name = body
        .strip_prefix("name")?
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let name_end = after_name.strip_prefix('"')?.find('"')? + 2;
    let name = after_name[1..name_end - 1].to_owned();
    let rest = after_name[name_end..]
        .trim_start()
        .strip_prefix(',')?
        .trim_start();
    let value = rest
        .strip_prefix("valueFrom")
        .or_else(|| rest.strip_prefix("value"))?
        .trim_start()
        .strip_prefix('=')?
        .trim();
    Some((name, value.to_owned()))
}

pub fn terraform_settings(dep: &mut Deployment) {
    for file in files_under(&repo().join("terraform"), ".tf") {
        let at = rel(&file);
        let hcl = Hcl::parse(&std::fs::read_to_string(&file).unwrap());
        let containers = hcl.containers();
        let mut seen = BTreeSet::new();

        // Environment entries: one-line objects, and multi-line `{ name = … value = … }`.
        let mut entries: Vec<(usize, String, String)> = Vec::new();
        for (i, l) in hcl.lines.iter().enumerate() {
            if let Some((n, v)) = inline_entry(l) {
                entries.push((i, n, v));
            }
        }
        for (&open, _) in hcl.close.iter() {
            if hcl.lines[open].trim() != "{" {
                continue;
            }
            let children = hcl.children(open);
            let Some((name_line, name)) = children
                .iter()
                .find(|(_, k, _)| k == "name")
                .and_then(|(i, _, v)| Some((*i, hcl_literal(v)?)))
            else {
                continue;
            };
            let value = hcl
                .child(open, "value")
                .or_else(|| hcl.child(open, "valueFrom"));
            if let Some(v) = value {
                seen.insert(name_line);
                entries.push((open, name, v));
            }
        }
        for (i, name, value) in entries {
            seen.insert(i);
            let owner = hcl.ancestors[i]
                .iter()
                .rev()
                .find_map(|a| containers.iter().find(|(o, _)| o == a))
                .map(|(_, n)| n.clone())
                .or_else(|| {
                    // A list in `locals { L = … }` that a container takes as `local.L`.
                    let chain = &hcl.ancestors[i];
                    let top = chain
                        .iter()
                        .position(|&a| hcl.lines[a].trim() == "locals {")?;
                    let key = hcl.key_of(*chain.get(top + 1)?)?;
                    containers
                        .iter()
                        .find(|(o, _)| {
                            hcl.children(*o)
                                .iter()
                                .any(|(_, _, v)| *v == format!("local.{key}"))
                        })
                        .map(|(_, n)| n.clone())
                });
            let Some(container) = owner else {
                if has_berth_token(&name) {
                    dep.unaccounted.push(format!(
                        "{at}:{}: {name} is set in no container definition this test can find",
                        i + 1
                    ));
                }
                continue;
            };
            match container_binary(&container) {
                Ok(binary) => dep.settings.push(Setting {
                    name,
                    value,
                    binary,
                    consumer: format!("container {container}"),
                    at: format!("{at}:{}", i + 1),
                }),
                Err(e) => dep.unaccounted.push(format!("{at}:{}: {e}", i + 1)),
            }
        }

        // Output maps that document a binary's settings: `BERTH_X = …` keys.
        for (&open, _) in hcl.close.iter() {
            let head = hcl.lines[open].trim();
            let Some(output) = head
                .strip_prefix("output \"")
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let binary = if output.starts_with("scheduler_") {
                Some(Binary::Scheduler)
            } else if output.starts_with("hostd_") {
                Some(Binary::Hostd)
            } else {
                None
            };
            let end = hcl.close[&open];
            for i in open + 1..end {
                let l = hcl.lines[i].trim();
                let Some((k, v)) = l.split_once('=') else {
                    continue;
                };
                let k = k.trim();
                if !has_berth_token(k) || env_name_prefix(k) != k {
                    continue;
                }
                seen.insert(i);
                match binary {
                    Some(b) => dep.settings.push(Setting {
                        name: k.to_owned(),
                        value: v.trim().to_owned(),
                        binary: Some(b),
                        consumer: format!("output {output}"),
                        at: format!("{at}:{}", i + 1),
                    }),
                    None => dep.unaccounted.push(format!(
                        "{at}:{}: output `{output}` names {k}, and this test cannot tell which binary it is for",
                        i + 1
                    )),
                }
            }
        }

        // Anything else that names a BERTH_ variable in code (descriptions are prose).
        for (i, l) in hcl.lines.iter().enumerate() {
            let t = l.trim_start();
            if seen.contains(&i) || t.starts_with("description") || !has_berth_token(t) {
                continue;
            }
            dep.unaccounted.push(format!(
                "{at}:{}: `{}` names {:?}; teach deploy_flags.rs which binary reads it",
                i + 1,
                t,
                berth_tokens(t)
            ));
        }
    }
}

/// `set_key /etc/berth/hostd.env KEY VALUE` in the hosts' boot script(s), and any
/// other line of ami/scripts or a template that writes a BERTH_ key to hostd.env.
pub fn host_script_settings(dep: &mut Deployment) {
    let mut scripts = files_under(&repo().join("terraform"), ".tftpl");
    scripts.extend(files_under(&repo().join("ami/scripts"), ".sh"));
    for file in scripts {
        let at = rel(&file);
        for (i, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            let t = line.trim();
            if t.starts_with('#') || !has_berth_token(t) {
                continue;
            }
            let words: Vec<&str> = t.split_whitespace().collect();
            if words.len() >= 4 && words[0] == "set_key" && words[1].ends_with("hostd.env") {
                let value = words[3..].join(" ");
                let value = value
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                    .unwrap_or(&value)
                    .to_owned();
                dep.settings.push(Setting {
                    name: words[2].to_owned(),
                    value,
                    binary: Some(Binary::Hostd),
                    consumer: words[1].to_owned(),
                    at: format!("{at}:{}", i + 1),
                });
            } else if t.contains("hostd.env") {
                dep.unaccounted.push(format!(
                    "{at}:{}: `{t}` writes {:?} to hostd.env in a form deploy_flags.rs does not read",
                    i + 1,
                    berth_tokens(t)
                ));
            }
            // Other BERTH_ names in these scripts are the scripts' own inputs
            // (provision.sh's BERTH_ROOT, BERTH_INPUTS, …), read by no binary.
        }
    }
}

/// ami/files/hostd.env and the unit that starts hostd with it.
pub fn ami_settings(dep: &mut Deployment) {
    let env_file = "ami/files/hostd.env";
    let target = env_file_target();
    for (i, line) in read(env_file).lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            dep.unaccounted
                .push(format!("{env_file}:{}: `{t}` is not KEY=VALUE", i + 1));
            continue;
        };
        dep.settings.push(Setting {
            name: k.trim().to_owned(),
            value: v.trim().to_owned(),
            binary: Some(Binary::Hostd),
            consumer: target.clone(),
            at: format!("{env_file}:{}", i + 1),
        });
    }
    let unit_file = "ami/files/berth-hostd.service";
    for (i, line) in read(unit_file).lines().enumerate() {
        let Some(cmd) = line.trim().strip_prefix("ExecStart=") else {
            continue;
        };
        let mut words = cmd.split_whitespace();
        let program = words
            .next()
            .unwrap_or_default()
            .trim_start_matches(['-', '@', '+', '!']);
        assert!(
            program.ends_with("/hostd"),
            "{unit_file}:{}: ExecStart runs {program}, not hostd",
            i + 1
        );
        for w in words {
            if w.starts_with("--") {
                let flag = w.split('=').next().unwrap_or(w).to_owned();
                dep.hostd_flags
                    .push((flag, format!("{unit_file}:{}", i + 1)));
            }
        }
    }
}

/// Where provision.sh installs ami/files/hostd.env.
pub fn env_file_target() -> String {
    read("ami/scripts/provision.sh")
        .lines()
        .find(|l| l.trim_start().starts_with("install_file") && l.contains("/hostd.env\""))
        .and_then(|l| l.split_whitespace().last().map(str::to_owned))
        .expect("ami/scripts/provision.sh does not install hostd.env with install_file")
}

pub fn deployment() -> Deployment {
    let mut dep = Deployment::default();
    terraform_settings(&mut dep);
    host_script_settings(&mut dep);
    ami_settings(&mut dep);
    assert!(
        dep.unaccounted.is_empty(),
        "settings this test cannot attribute to a binary:\n  {}",
        dep.unaccounted.join("\n  ")
    );
    for b in Binary::ALL {
        let n = dep.of(b).filter(|s| s.name.starts_with("BERTH_")).count();
        assert!(
            n > 0,
            "found no BERTH_ setting the deployment gives to {b}: is the reader broken?"
        );
    }
    dep
}
