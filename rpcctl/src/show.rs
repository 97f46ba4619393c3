//! The read-only commands: `services`, `instances`, `describe`, `watch`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rpc_core::reflection::{ReflectionClient, ServiceDescriptor};
use rpc_registry::{Instance, InstanceKey, Revision};
use serde_json::json;

use crate::target::{self, TargetArgs};
use crate::Failure;

/// `rpcctl services`.
pub(crate) async fn services(target: &TargetArgs, as_json: bool) -> Result<(), Failure> {
    if let Some(addr) = &target.server {
        let client = target.server_client(addr, 1).await?;
        let all = ReflectionClient::new(client)
            .describe_all()
            .timeout(target.timeout)
            .await
            .map_err(|e| Failure::Failed(format!("{addr}: reflection failed: {e}")))?;
        if as_json {
            let listed: Vec<_> = all
                .iter()
                .map(|s| json!({"service": s.name, "methods": s.methods.len()}))
                .collect();
            println!("{}", json!(listed));
        } else {
            println!("{:<40} {:>7}", "SERVICE", "METHODS");
            for s in &all {
                println!("{:<40} {:>7}", s.name, s.methods.len());
            }
        }
        return Ok(());
    }
    let registries = target.registries("services")?;
    // One row per service over every registry; the counts are the largest any of
    // them reports (each registry sees every provider that is up).
    let mut merged: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut errors = Vec::new();
    for member in registries.members() {
        match tokio::time::timeout(target.timeout, member.services()).await {
            Ok(Ok(list)) => {
                for s in list {
                    let row = merged.entry(s.service).or_default();
                    row.0 = row.0.max(s.instances);
                    row.1 = row.1.max(s.consumers);
                }
            }
            Ok(Err(e)) => errors.push(format!("{}: {e}", member.url())),
            Err(_) => errors.push(format!("{}: timed out", member.url())),
        }
    }
    if errors.len() == registries.members().len() {
        return Err(Failure::Failed(format!(
            "no registry answered: {}",
            errors.join("; ")
        )));
    }
    if as_json {
        let listed: Vec<_> = merged
            .iter()
            .map(|(s, (i, c))| json!({"service": s, "instances": i, "consumers": c}))
            .collect();
        println!("{}", json!(listed));
    } else {
        println!("{:<40} {:>9} {:>9}", "SERVICE", "INSTANCES", "CONSUMERS");
        for (service, (instances, consumers)) in &merged {
            println!("{service:<40} {instances:>9} {consumers:>9}");
        }
    }
    Ok(())
}

/// `rpcctl instances SERVICE`.
pub(crate) async fn instances(
    target: &TargetArgs,
    service: &str,
    as_json: bool,
) -> Result<(), Failure> {
    let registries = target.registries("instances")?;
    let instances = target::instances(&registries, service, target.timeout).await?;
    if as_json {
        println!("{}", serde_json::to_string(&instances)?);
        return Ok(());
    }
    if instances.is_empty() {
        println!("no instances of {service}");
        return Ok(());
    }
    println!(
        "{:<22} {:>6} {:<10} {:<10} {:>8}  METHODS",
        "ADDRESS", "WEIGHT", "GROUP", "VERSION", "AGE"
    );
    for i in &instances {
        println!(
            "{:<22} {:>6} {:<10} {:<10} {:>8}  {}",
            i.addr,
            i.weight,
            dash(&i.group),
            dash(&i.version),
            age(i.started_at_ms),
            dash(&i.method_names().join(","))
        );
    }
    Ok(())
}

/// `rpcctl describe SERVICE`.
pub(crate) async fn describe(
    target: &TargetArgs,
    service: &str,
    as_json: bool,
) -> Result<(), Failure> {
    let (described, source) = match &target.server {
        Some(addr) => (
            target::describe_at(target, addr, service).await?,
            addr.clone(),
        ),
        None => {
            let registries = target.registries("describe")?;
            let instances = target::instances(&registries, service, target.timeout).await?;
            if instances.is_empty() {
                return Err(Failure::Failed(format!(
                    "no instances of {service} in {}",
                    target.registry_url()
                )));
            }
            let mut failures = Vec::new();
            let mut found = None;
            for instance in &instances {
                match target::describe_at(target, &instance.addr, service).await {
                    Ok(d) => {
                        found = Some((d, instance.addr.clone()));
                        break;
                    }
                    Err(Failure::Failed(e)) => failures.push(e),
                    Err(other) => return Err(other),
                }
            }
            match found {
                Some(found) => found,
                None => {
                    // No provider answered: the method list the providers
                    // registered is all there is.
                    let names = instances[0].method_names();
                    eprintln!(
                        "rpcctl: no provider answered reflection ({}); showing the method \
                         names registered",
                        failures.join("; ")
                    );
                    let d = ServiceDescriptor::undescribed(service, &names);
                    (d, format!("registry {}", target.registry_url()))
                }
            }
        }
    };
    if as_json {
        println!("{}", serde_json::to_string(&described)?);
        return Ok(());
    }
    print!("{}", render(&described, &source));
    Ok(())
}

/// A description as text for people.
fn render(described: &ServiceDescriptor, source: &str) -> String {
    let mut out = format!("service {}  (described by {source})\n", described.name);
    for line in described.docs.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    for method in &described.methods {
        out.push('\n');
        if described.described {
            out.push_str(&format!("  {}\n", method.signature()));
        } else {
            out.push_str(&format!("  {}(...)\n", method.name));
        }
        for line in method.docs.lines() {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

/// `rpcctl watch SERVICE`: the providers now, then each change as it is reported.
pub(crate) async fn watch(
    target: &TargetArgs,
    service: &str,
    duration: Option<Duration>,
    as_json: bool,
) -> Result<(), Failure> {
    let registries = target.registries("watch")?;
    // One long-poll loop per registry; each sends its latest list, the view is their
    // union.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<Instance>)>(16);
    for (index, member) in registries.members().iter().enumerate() {
        let (member, tx, service) = (member.clone(), tx.clone(), service.to_owned());
        let timeout = target.timeout;
        tokio::spawn(async move {
            let mut since = Revision::default();
            let mut first = true;
            loop {
                let wait = Duration::from_secs(25);
                let view = if first {
                    tokio::time::timeout(timeout, member.lookup(&service)).await
                } else {
                    tokio::time::timeout(wait + timeout, member.watch(&service, since, wait)).await
                };
                match view {
                    Ok(Ok(view)) => {
                        first = false;
                        since = view.revision;
                        if tx.send((index, view.instances)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => {
                        eprintln!("rpcctl: {}: {e}; retrying", member.url());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(_) => {
                        eprintln!("rpcctl: {}: no answer; retrying", member.url());
                    }
                }
            }
        });
    }
    drop(tx);
    let mut per_member: HashMap<usize, Vec<Instance>> = HashMap::new();
    let mut shown: Option<BTreeMap<InstanceKey, Instance>> = None;
    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        let (index, list) = tokio::select! {
            () = &mut stop => return Ok(()),
            next = rx.recv() => match next {
                Some(next) => next,
                None => return Err(Failure::Failed("every watch ended".into())),
            },
        };
        per_member.insert(index, list);
        let union: BTreeMap<InstanceKey, Instance> = per_member
            .values()
            .flatten()
            .map(|i| (i.key(), i.clone()))
            .collect();
        match &shown {
            None => {
                if as_json {
                    let all: Vec<_> = union.values().collect();
                    println!(
                        "{}",
                        json!({"event": "initial", "service": service, "instances": all})
                    );
                } else {
                    println!("{} {service}: {} provider(s)", clock(), union.len());
                    for i in union.values() {
                        println!("  {}", line(i));
                    }
                }
            }
            Some(before) => {
                for change in changes(before, &union) {
                    if as_json {
                        println!("{}", change.to_json());
                    } else {
                        println!("{} {}", clock(), change.to_text());
                    }
                }
            }
        }
        shown = Some(union);
    }
}

/// One change to a service's provider list.
#[derive(Debug, PartialEq)]
enum Change<'a> {
    /// A provider joined.
    Added(&'a Instance),
    /// A provider left.
    Removed(&'a Instance),
    /// A provider's weight or metadata changed.
    Updated {
        /// As it was.
        before: &'a Instance,
        /// As it is.
        after: &'a Instance,
    },
}

impl Change<'_> {
    fn to_text(&self) -> String {
        match self {
            Change::Added(i) => format!("+ {}", line(i)),
            Change::Removed(i) => format!("- {}", i.addr),
            Change::Updated { before, after } if before.weight != after.weight => format!(
                "~ {} weight {} -> {}",
                after.addr, before.weight, after.weight
            ),
            Change::Updated { after, .. } => format!("~ {}", line(after)),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Change::Added(i) => json!({"event": "added", "instance": i}),
            Change::Removed(i) => json!({"event": "removed", "instance": i}),
            Change::Updated { before, after } => {
                json!({"event": "updated", "before": before, "instance": after})
            }
        }
    }
}

/// What changed from `before` to `after`: removals, then additions and updates.
fn changes<'a>(
    before: &'a BTreeMap<InstanceKey, Instance>,
    after: &'a BTreeMap<InstanceKey, Instance>,
) -> Vec<Change<'a>> {
    let mut out: Vec<Change<'a>> = before
        .iter()
        .filter(|(k, _)| !after.contains_key(k))
        .map(|(_, i)| Change::Removed(i))
        .collect();
    for (key, now) in after {
        match before.get(key) {
            None => out.push(Change::Added(now)),
            Some(was) if was != now => out.push(Change::Updated {
                before: was,
                after: now,
            }),
            Some(_) => {}
        }
    }
    out
}

/// An instance on one line.
fn line(i: &Instance) -> String {
    let mut text = format!("{} weight {}", i.addr, i.weight);
    if !i.group.is_empty() || !i.version.is_empty() {
        text.push_str(&format!(" group {:?} version {:?}", i.group, i.version));
    }
    let methods = i.method_names();
    if !methods.is_empty() {
        text.push_str(&format!(" methods {}", methods.join(",")));
    }
    text
}

/// `-` for an empty field.
fn dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

/// How long ago a start time in Unix milliseconds was: `42s`, `7m`, `3h`, `2d`.
fn age(started_at_ms: u64) -> String {
    if started_at_ms == 0 {
        return "-".to_owned();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(started_at_ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The time of day in UTC, to the millisecond, for watch lines.
fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_removals_additions_and_updates() {
        let a = Instance::new("s", "127.0.0.1:1");
        let b = Instance::new("s", "127.0.0.1:2");
        let b2 = b.clone().weight(300);
        let c = Instance::new("s", "127.0.0.1:3");
        let before = BTreeMap::from([(a.key(), a.clone()), (b.key(), b.clone())]);
        let after = BTreeMap::from([(b2.key(), b2.clone()), (c.key(), c.clone())]);
        let found = changes(&before, &after);
        assert_eq!(
            found,
            [
                Change::Removed(&a),
                Change::Updated {
                    before: &b,
                    after: &b2
                },
                Change::Added(&c)
            ]
        );
        assert_eq!(found[1].to_text(), "~ 127.0.0.1:2 weight 100 -> 300");
        assert_eq!(found[0].to_text(), "- 127.0.0.1:1");
    }

    #[test]
    fn ages() {
        assert_eq!(age(0), "-");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(age(now - 5_000), "5s");
        assert_eq!(age(now - 600_000), "10m");
    }
}
