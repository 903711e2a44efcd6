//! The Kubernetes manifests under `deploy/` hold what the README says they do: a headless Service
//! naming every pod (ready or not) as the seed list, pods advertising their own IP, probes on
//! `/readyz` and `/healthz`, a grace period for the leave on SIGTERM, the cluster key from a
//! Secret, and only flags and environment variables that `cohort serve` knows.

use std::process::Command;

use serde_json::Value;

fn manifest(name: &str) -> Value {
    let path = format!("{}/../../deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of `cohort serve --help`: every flag, with the environment variable it reads.
fn serve_help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["serve", "--help"])
        .output()
        .expect("cohort runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

fn container(set: &Value) -> &Value {
    &set["spec"]["template"]["spec"]["containers"][0]
}

/// The value of `--flag=value` among the container's arguments.
fn flag<'a>(args: &'a [Value], name: &str) -> &'a str {
    let prefix = format!("--{name}=");
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|arg| arg.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {args:?}"))
}

/// The value of the named environment variable's downward-API field.
fn env_field<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
        .unwrap_or_else(|| panic!("no {name} from the downward API"))
}

#[test]
fn the_service_is_headless_and_names_pods_before_they_are_ready() {
    let service = manifest("service.yaml");
    assert_eq!(service["kind"], "Service");
    assert_eq!(service["spec"]["clusterIP"], "None");
    // A pod is ready only once it joined: the others must find it before that.
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let set = manifest("statefulset.yaml");
    assert_eq!(
        service["spec"]["selector"],
        set["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
}

#[test]
fn pods_seed_from_the_service_advertise_their_ip_and_probe_readiness() {
    let service = manifest("service.yaml");
    let set = manifest("statefulset.yaml");
    let container = container(&set);
    let args = container["args"].as_array().unwrap();
    assert_eq!(args[0], "serve");

    let name = service["metadata"]["name"].as_str().unwrap();
    let peer_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "peer")
        .and_then(|p| p["port"].as_u64())
        .unwrap();
    assert_eq!(
        flag(args, "seeds"),
        format!("{name}.$(POD_NAMESPACE).svc.cluster.local:{peer_port}")
    );
    assert_eq!(env_field(container, "POD_NAMESPACE"), "metadata.namespace");
    assert_eq!(flag(args, "advertise"), format!("$(POD_IP):{peer_port}"));
    assert_eq!(env_field(container, "POD_IP"), "status.podIP");
    assert_eq!(flag(args, "listen"), format!("0.0.0.0:{peer_port}"));
    assert_eq!(flag(args, "name"), "$(POD_NAME)");
    assert_eq!(env_field(container, "POD_NAME"), "metadata.name");

    let http_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap();
    assert_eq!(flag(args, "http"), format!("0.0.0.0:{http_port}"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http");
    }
    let grace = set["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(grace >= 10, "{grace} s to leave gracefully");
}

#[test]
fn the_cluster_key_comes_from_a_secret() {
    let set = manifest("statefulset.yaml");
    let container = container(&set);
    let key_file = flag(container["args"].as_array().unwrap(), "cluster-key-file");
    let mount = &container["volumeMounts"][0];
    let dir = mount["mountPath"].as_str().unwrap();
    let volume = set["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let item = &volume["secret"]["items"][0];
    assert_eq!(
        format!("{dir}/{}", item["path"].as_str().unwrap()),
        key_file
    );
    assert_eq!(volume["secret"]["secretName"], "cohort-keys");
    assert_eq!(mount["readOnly"], true);
}

#[test]
fn every_flag_and_variable_the_manifests_use_is_one_serve_knows() {
    let help = serve_help();
    let set = manifest("statefulset.yaml");
    let container = container(&set);
    for arg in container["args"].as_array().unwrap()[1..].iter() {
        let arg = arg.as_str().unwrap();
        let flag = arg.split('=').next().unwrap();
        assert!(help.contains(&format!("{flag} ")), "serve has no {flag}");
    }
    for env in container["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        if name.starts_with("COHORT_") {
            assert!(
                help.contains(&format!("[env: {name}=")),
                "serve reads no {name}"
            );
        }
    }
}
