//! deploy/kubernetes: every manifest validates against the Kubernetes API schemas
//! (kubernetes-validate, strict), and the wiring agrees with pgmoat's own reading of the
//! config each ConfigMap carries: ports, probes, mounts, config and certificate paths, peer
//! names and ids, selectors, and the grace period against shutdown_timeout.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use pgmoat::config::{Config, FileChecks};
use serde_json::Value;
use support::*;

/// The Kubernetes version the schemas come from.
const KUBERNETES: &str = "1.31.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Runs the schema check on `dir`: Ok(documents) or Err(what it said).
fn check(dir: &Path) -> Result<Vec<(String, Value)>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/check_manifests.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(dir)
        .arg(KUBERNETES)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(output_text(&out));
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(report["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["file"].as_str().unwrap().to_owned(), d["doc"].clone()))
        .collect())
}

fn find<'a>(docs: &'a [(String, Value)], dir: &str, kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|(file, d)| {
            file.starts_with(dir) && d["kind"] == kind && d["metadata"]["name"] == name
        })
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no {kind} {name} in {dir}"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn port_named(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name} in {}", container["name"]))
}

/// The volume mounted over `path` in `container` (the mount's volume, and the path below it).
fn volume_for<'a>(workload: &'a Value, container: &Value, path: &Path) -> (&'a Value, PathBuf) {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is on no volume mount", path.display()));
    let rest = path
        .strip_prefix(mount["mountPath"].as_str().unwrap())
        .unwrap()
        .to_owned();
    let volume = workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    (volume, rest)
}

/// pgmoat's reading of a ConfigMap's pgmoat.toml (with the environment the pod gives it).
fn load_config(config_map: &Value, env: &[(&str, &str)]) -> Config {
    let text = config_map["data"]["pgmoat.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgmoat.toml");
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_with(Some(&path), env, FileChecks::Skip)
        .unwrap_or_else(|e| panic!("the ConfigMap's pgmoat.toml: {e}"))
}

/// The ConfigMap mounted where `container` reads its config file, which must hold that key.
fn config_map_at<'a>(
    docs: &'a [(String, Value)],
    dir: &str,
    workload: &Value,
    container: &Value,
    config_path: &str,
) -> &'a Value {
    let (volume, inside) = volume_for(workload, container, Path::new(config_path));
    let config_map = find(
        docs,
        dir,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    );
    assert!(config_map["data"][inside.to_str().unwrap()].is_string());
    config_map
}

/// The port of metrics_addr, where the probes must point.
fn metrics_port(config: &Config) -> u64 {
    config
        .metrics_addr
        .as_deref()
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .expect("metrics_addr with a port")
}

fn labels_match(selector: &Value, labels: &Value) {
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&labels[k], v, "selector {k}={v} matches no pod label");
    }
}

/// Every file the config names sits on a mounted Secret (certificates, keys, auth_file).
fn files_are_mounted(config: &Config, workload: &Value, pgmoat: &Value) -> Vec<(String, PathBuf)> {
    let files = [
        &config.auth_file,
        &config.client_tls_cert_file,
        &config.client_tls_key_file,
        &config.client_tls_ca_file,
        &config.server_tls_ca_file,
    ];
    let mut secrets = Vec::new();
    for file in files.into_iter().flatten() {
        let (volume, inside) = volume_for(workload, pgmoat, file);
        let secret = volume["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{} is not on a Secret volume", file.display()));
        secrets.push((secret.to_owned(), inside));
    }
    secrets
}

#[test]
fn the_schema_check_catches_a_wrong_field() {
    // The positive control for the test below: a field the API does not have is refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports:\n    - port: 1\n      targetPrt: 2\n",
    )
    .unwrap();
    let err = check(dir.path()).expect_err("a misspelt field passed the schema check");
    assert!(err.contains("targetPrt"), "{err}");
}

#[test]
fn the_shared_tier_is_wired_as_its_config_says() {
    let docs = check(&root()).unwrap_or_else(|e| panic!("schema check: {e}"));
    let dir = "shared-tier/";
    let sts = find(&docs, dir, "StatefulSet", "pgmoat");
    let pod = &sts["spec"]["template"];
    let pgmoat = container(sts, "pgmoat");
    labels_match(
        &sts["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"],
    );

    // The config file the container runs with is the ConfigMap's pgmoat.toml.
    let command = pgmoat["args"][0].as_str().unwrap().replace("$$", "$");
    let config_path = command
        .split("--config ")
        .nth(1)
        .expect("run --config PATH")
        .split_whitespace()
        .next()
        .unwrap();
    let config_map = config_map_at(&docs, dir, sts, pgmoat, config_path);

    // Each pod's peer_id is its ordinal + 1, as the shell in the container computes it.
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    for ordinal in 0..replicas {
        let probe = command.replace(
            &command[command.find("exec ").unwrap()..],
            "echo $PGMOAT_PEER_ID",
        );
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&probe)
            .env("HOSTNAME", format!("pgmoat-{ordinal}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (ordinal + 1).to_string()
        );
    }
    let config = load_config(config_map, &[("PGMOAT_PEER_ID", "1")]);

    // Ports: the container's postgres port is listen_port, both Services target it.
    let postgres = port_named(pgmoat, "postgres");
    assert_eq!(postgres, u64::from(config.listen_port));
    assert_eq!(config.listen_addr, "0.0.0.0");
    let metrics_port = metrics_port(&config);
    assert_eq!(port_named(pgmoat, "metrics"), metrics_port);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(pgmoat[probe]["httpGet"]["path"], "/health", "{probe}");
        assert_eq!(pgmoat[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let clients = find(&docs, dir, "Service", "pgmoat");
    let peers_service = find(
        &docs,
        dir,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap(),
    );
    for service in [clients, peers_service] {
        labels_match(&service["spec"]["selector"], &pod["metadata"]["labels"]);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "postgres");
    }
    assert_eq!(peers_service["spec"]["clusterIP"], "None");
    assert_eq!(peers_service["spec"]["publishNotReadyAddresses"], true);

    // Peers: one per replica, named by the headless Service, on listen_port, ids 1..n.
    assert_eq!(config.peers.len() as u64, replicas);
    for ordinal in 0..replicas {
        let peer = &config.peers[&(ordinal as u16 + 1)];
        assert_eq!(
            peer.host,
            format!(
                "pgmoat-{ordinal}.{}",
                peers_service["metadata"]["name"].as_str().unwrap()
            )
        );
        assert_eq!(u64::from(peer.port), postgres);
    }

    // Certificates: on the Secret cert-manager writes, with every name clients and peers use.
    assert!(config.watch_files, "cert-manager renewals need watch_files");
    let certificate = find(&docs, dir, "Certificate", "pgmoat");
    let secrets = files_are_mounted(&config, sts, pgmoat);
    let tls_secret = certificate["spec"]["secretName"].as_str().unwrap();
    for (secret, key) in &secrets {
        if secret == tls_secret {
            assert!(
                ["tls.crt", "tls.key", "ca.crt"].contains(&key.to_str().unwrap()),
                "cert-manager writes no {}",
                key.display()
            );
        }
    }
    assert!(secrets.iter().any(|(s, _)| s == tls_secret));
    let names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.contains(&"pgmoat"));
    for peer in config.peers.values() {
        assert!(
            names.contains(&peer.host.as_str()),
            "{} not in the certificate",
            peer.host
        );
    }

    // Stopping: the grace period covers the preStop pause and shutdown_timeout.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    let pre_stop = pgmoat["lifecycle"]["preStop"]["exec"]["command"][2]
        .as_str()
        .unwrap();
    let pause: f64 = pre_stop.trim_start_matches("sleep ").parse().unwrap();
    assert!(grace > config.shutdown_timeout.0 + pause, "grace {grace}");
    let pdb = find(&docs, dir, "PodDisruptionBudget", "pgmoat");
    labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"],
    );
}

#[test]
fn the_sidecar_listens_on_loopback_for_its_app() {
    let docs = check(&root()).unwrap_or_else(|e| panic!("schema check: {e}"));
    let dir = "sidecar/";
    let deployment = find(&docs, dir, "Deployment", "app");
    let pgmoat = container(deployment, "pgmoat");
    let app = container(deployment, "app");
    let args: Vec<&str> = pgmoat["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let config_map = config_map_at(&docs, dir, deployment, pgmoat, config_path);
    let config = load_config(config_map, &[]);
    assert_eq!(config.listen_addr, "127.0.0.1");
    assert!(config.peers.is_empty() && config.peer_id == 0);
    let url = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DATABASE_URL")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    assert!(
        url.contains(&format!("@localhost:{}/", config.listen_port)),
        "{url}"
    );
    let root_cert = url.split("sslrootcert=").nth(1).unwrap();
    let (ca_volume, _) = volume_for(deployment, app, Path::new(root_cert));
    assert!(ca_volume["secret"]["secretName"].is_string());
    files_are_mounted(&config, deployment, pgmoat);
    let metrics_port = metrics_port(&config);
    assert_eq!(port_named(pgmoat, "metrics"), metrics_port);
    assert_eq!(pgmoat["readinessProbe"]["httpGet"]["port"], "metrics");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    assert!(grace > config.shutdown_timeout.0);
}
