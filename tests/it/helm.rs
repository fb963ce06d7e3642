//! The Helm chart (`helm/magistral`): `helm lint --strict` and `helm template` over the values
//! files in `tests/configs/helm/`, assertions on the rendered objects, and what the pods would
//! read run through `magistral check` by `scripts/helm-check`, the documented command (the root
//! configuration first turned into values by `scripts/helm-values`).
//!
//! helm comes from `scripts/install-helm.sh` (`.tools/bin/helm`) or `$HELM_BIN`. Without it
//! these tests fail, unless `MAGISTRAL_SKIP_HELM=1` asks to skip them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_magistral");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn chart() -> PathBuf {
    Path::new(REPO).join("helm/magistral")
}

fn values(name: &str) -> PathBuf {
    Path::new(REPO).join("tests/configs/helm").join(format!("{name}.yaml"))
}

/// The helm binary, or `None` when skipping was asked for.
fn helm() -> Option<PathBuf> {
    let candidate =
        std::env::var_os("HELM_BIN").map(PathBuf::from).unwrap_or_else(|| Path::new(REPO).join(".tools/bin/helm"));
    if candidate.is_file() {
        return Some(candidate);
    }
    if std::env::var("MAGISTRAL_SKIP_HELM").as_deref() == Ok("1") {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: Helm chart test — no helm at {} and MAGISTRAL_SKIP_HELM=1.\n\
             !!! The chart was NOT checked. Run scripts/install-helm.sh to test it.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            candidate.display()
        );
        return None;
    }
    panic!(
        "helm not found at {} (HELM_BIN unset or wrong): run scripts/install-helm.sh \
         (or set MAGISTRAL_SKIP_HELM=1 to skip the chart tests knowingly)",
        candidate.display()
    );
}

fn run_helm(helm: &Path, args: &[&str]) -> Output {
    Command::new(helm)
        .args(args)
        // No user helm config or repositories leak into the test.
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("magistral-helm-test/config"))
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("magistral-helm-test/cache"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("magistral-helm-test/data"))
        .output()
        .expect("run helm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The objects `helm template` rendered.
struct Rendered {
    docs: Vec<Value>,
}

impl Rendered {
    fn parse(yaml: &str) -> Self {
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let value: serde_norway::Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
            if value.is_null() {
                continue;
            }
            docs.push(serde_json::to_value(value).expect("YAML as JSON"));
        }
        Self { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "expected one {kind}, rendered {}", found.len());
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    fn container(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    fn pod(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    fn env(&self, name: &str) -> Option<&Value> {
        self.container()["env"].as_array()?.iter().find(|e| e["name"] == name)
    }

    fn env_value(&self, name: &str) -> Option<&str> {
        self.env(name)?["value"].as_str()
    }

    fn config_toml(&self) -> &str {
        self.all("ConfigMap")
            .into_iter()
            .find_map(|c| c["data"]["magistral.toml"].as_str())
            .expect("a ConfigMap with magistral.toml")
    }
}

fn template(helm: &Path, release: &str, args: &[&str]) -> Rendered {
    let chart = chart();
    let mut all = vec!["template", release, chart.to_str().unwrap(), "--namespace", "integration"];
    all.extend_from_slice(args);
    let out = run_helm(helm, &all);
    assert!(out.status.success(), "helm {all:?} failed:\n{}", text(&out.stderr));
    Rendered::parse(&text(&out.stdout))
}

fn template_values(helm: &Path, name: &str) -> Rendered {
    let file = values(name);
    template(helm, "bus", &["-f", file.to_str().unwrap()])
}

/// `helm template` that must fail; returns its error text.
fn template_error(helm: &Path, args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec!["template", "bus", chart.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_helm(helm, &all);
    assert!(!out.status.success(), "helm {all:?} should have failed:\n{}", text(&out.stdout));
    text(&out.stderr)
}

/// `scripts/helm-check` — the documented command (helm/magistral/README.md) — on the chart
/// rendered with `args`: it lays out what the pod reads (ConfigMaps at their mount paths, a
/// placeholder for every referenced Secret key, the pod's environment) and runs
/// `magistral check` on it.
fn helm_check(helm: &Path, release: &str, args: &[&str]) -> Output {
    Command::new(Path::new(REPO).join("scripts/helm-check"))
        .args(["--release", release, "--namespace", "integration"])
        .args(args)
        .current_dir(REPO)
        .env("HELM_BIN", helm)
        .env("MAGISTRAL_BIN", BIN)
        // No user helm config or repositories leak into the test.
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("magistral-helm-test/config"))
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("magistral-helm-test/cache"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("magistral-helm-test/data"))
        .output()
        .expect("run scripts/helm-check")
}

fn assert_checks(helm: &Path, release: &str, args: &[&str], r: &Rendered, what: &str) {
    let out = helm_check(helm, release, args);
    assert!(
        out.status.success(),
        "{what}: the rendered configuration fails `magistral check`:\n{}{}\n--- magistral.toml ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        r.config_toml()
    );
    println!("{what}: {}", text(&out.stdout).trim());
}

/// Seconds of a Kubernetes-style duration in magistral.toml (`"20s"`, `"1m"`).
fn seconds(duration: &str) -> u64 {
    let d = duration.trim_matches('"');
    if let Some(s) = d.strip_suffix("ms") {
        s.parse::<u64>().unwrap() / 1000
    } else if let Some(s) = d.strip_suffix('s') {
        s.parse().unwrap()
    } else if let Some(m) = d.strip_suffix('m') {
        m.parse::<u64>().unwrap() * 60
    } else {
        panic!("unexpected duration {duration}")
    }
}

fn toml_setting<'a>(toml: &'a str, key: &str) -> Option<&'a str> {
    toml.lines().find_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('=').map(str::trim))
}

/// What every rendering must hold: hardened pod, probes on the right paths, a grace period
/// that covers preStop + drain, listen on all interfaces, no Secret objects.
fn assert_common(r: &Rendered) {
    let pod = r.pod();
    let c = r.container();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(pod["automountServiceAccountToken"], false);

    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["ports"][0]["name"], "http");

    let strategy = &r.one("Deployment")["spec"]["strategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);

    let drain = seconds(toml_setting(r.config_toml(), "drain_timeout").expect("limits.drain_timeout rendered"));
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(grace > pre_stop + drain, "grace {grace}s must exceed preStop {pre_stop}s + drain {drain}s");

    assert!(r.env_value("MAGISTRAL_LISTEN").unwrap().starts_with("0.0.0.0:"), "listen on all interfaces");
    assert_eq!(r.env_value("MAGISTRAL_CONFIG"), Some("/etc/magistral/config/magistral.toml"));
    assert!(r.env_value("MAGISTRAL_NATS__URL").is_some());
    assert!(r.all("Secret").is_empty(), "the chart references Secrets, it never creates them");
    let service = r.one("Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(service["spec"]["selector"], r.one("Deployment")["spec"]["selector"]["matchLabels"]);
}

#[test]
fn chart_lints_strictly_with_every_values_file() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let mut runs = vec![vec!["lint", "--strict", chart.to_str().unwrap()]];
    let files: Vec<PathBuf> = ["minimal", "external-nats", "ha"].iter().map(|n| values(n)).collect();
    for f in &files {
        runs.push(vec!["lint", "--strict", chart.to_str().unwrap(), "-f", f.to_str().unwrap()]);
    }
    for args in runs {
        let out = run_helm(&helm, &args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "helm {args:?}:\n{stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("1 chart(s) linted, 0 chart(s) failed"), "{stdout}");
        println!("helm {}: {}", args[3..].join(" "), stdout.lines().last().unwrap_or_default());
    }
}

#[test]
fn minimal_values_render_one_checked_replica() {
    let Some(helm) = helm() else { return };
    let r = template_values(&helm, "minimal");
    assert_common(&r);
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 1);
    assert!(r.all("PodDisruptionBudget").is_empty(), "no PDB for one replica: it would block every node drain");
    assert!(r.all("HorizontalPodAutoscaler").is_empty());
    assert!(r.all("ServiceMonitor").is_empty());
    assert_eq!(r.env_value("MAGISTRAL_NATS__URL"), Some("nats://nats.messaging.svc.cluster.local:4222"));
    assert_eq!(r.container()["image"], "registry.example.com/integration/magistral:0.1.0");
    // The stream JSON string is kept byte for byte.
    let streams = r.named("ConfigMap", "bus-magistral-streams");
    assert!(streams["data"]["EVENTS.json"].as_str().unwrap().contains("\"duplicate_window\": 120000000000"));
    let file = values("minimal");
    assert_checks(&helm, "bus", &["-f", file.to_str().unwrap()], &r, "minimal");
}

#[test]
fn external_nats_values_reference_every_secret() {
    let Some(helm) = helm() else { return };
    let r = template_values(&helm, "external-nats");
    assert_common(&r);
    let toml = r.config_toml();

    // NATS: seed list in the environment, creds and TLS files mounted from Secrets.
    assert_eq!(
        r.env_value("MAGISTRAL_NATS__URL"),
        Some("tls://nats-0.nats.messaging:4222,tls://nats-1.nats.messaging:4222,tls://nats-2.nats.messaging:4222")
    );
    assert_eq!(toml_setting(toml, "creds_file"), Some("\"/run/secrets/magistral-nats/creds/nats.creds\""));
    assert_eq!(toml_setting(toml, "tls_ca_file"), Some("\"/run/secrets/magistral-nats/tls/ca.crt\""));
    assert_eq!(toml_setting(toml, "tls_cert_file"), Some("\"/run/secrets/magistral-nats/tls/tls.crt\""));
    assert_eq!(toml_setting(toml, "tls_required"), Some("true"));
    let volumes = r.pod()["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("volume {name}"));
    assert_eq!(volume("nats-creds")["secret"]["secretName"], "magistral-nats-creds");
    assert_eq!(
        volume("nats-creds")["secret"]["items"][0],
        serde_json::json!({"key": "magistral.creds", "path": "nats.creds"})
    );
    assert_eq!(volume("nats-tls")["secret"]["secretName"], "magistral-nats-tls");

    // Tokens and webhook secrets: references only, mounted read-only with just the named keys.
    assert!(toml.contains(r#"{ file = "/run/secrets/magistral/magistral-tokens/nav" }"#), "{toml}");
    assert!(toml.contains(r#"{ file = "/run/secrets/magistral/magistral-tokens/nav-next" }"#));
    assert!(toml.contains(r#"{ env = "SECRET_MAGISTRAL_TOKENS_BITRIX" }"#));
    assert!(toml.contains(r#"{ file = "/run/secrets/magistral/magistral-webhooks/nav-orders" }"#));
    assert!(
        toml.contains(r#"Authorization = { file = "/run/secrets/magistral/magistral-webhooks/nav-authorization" }"#)
    );
    let env = r.env("SECRET_MAGISTRAL_TOKENS_BITRIX").expect("env token from the Secret");
    assert_eq!(env["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "magistral-tokens", "key": "bitrix"}));
    let tokens = volumes.iter().find(|v| v["secret"]["secretName"] == "magistral-tokens").expect("tokens volume");
    assert_eq!(tokens["secret"]["defaultMode"], 0o440);
    let keys: Vec<&str> =
        tokens["secret"]["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["nav", "nav-next"], "only the keys the configuration names are mounted");
    for mount in r.container()["volumeMounts"].as_array().unwrap() {
        if mount["mountPath"].as_str().unwrap().starts_with("/run/secrets") {
            assert_eq!(mount["readOnly"], true, "{mount}");
        }
    }
    // Nothing secret in the ConfigMap: every token line is a reference.
    for line in toml.lines().map(str::trim).filter(|l| l.starts_with("{ ")) {
        assert!(
            line.starts_with("{ file = ") || line.starts_with("{ env = ") || line.starts_with("{ sha256 = "),
            "{line}"
        );
    }
    assert!(!toml.contains("whsec_"));
    // The YAML map stream was rendered as JSON with exact integers.
    let streams = r.named("ConfigMap", "bus-magistral-streams");
    let orders: Value = serde_json::from_str(streams["data"]["ORDERS.json"].as_str().unwrap()).unwrap();
    assert_eq!(orders["max_age"], 2_592_000_000_000_000u64);
    assert_eq!(orders["num_replicas"], 3);
    let file = values("external-nats");
    assert_checks(&helm, "bus", &["-f", file.to_str().unwrap()], &r, "external-nats");
}

#[test]
fn ha_values_render_hpa_pdb_and_service_monitor() {
    let Some(helm) = helm() else { return };
    let r = template_values(&helm, "ha");
    assert_common(&r);
    let deployment = r.one("Deployment");
    assert!(deployment["spec"].get("replicas").is_none(), "the HPA owns replicas: {}", deployment["spec"]);
    let hpa = r.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 12);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 65);
    assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 300);
    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    // 10 s preStop + 30 s drain + 10 s margin.
    assert_eq!(r.pod()["terminationGracePeriodSeconds"], 50);
    assert_eq!(toml_setting(r.config_toml(), "drain_timeout"), Some("\"30s\""));
    assert_eq!(toml_setting(r.config_toml(), "replicas"), Some("3"), "R3 system streams");
    // Default URL: the official NATS chart's service for this release name.
    assert_eq!(r.env_value("MAGISTRAL_NATS__URL"), Some("nats://bus-nats:4222"));
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/config"].as_str().is_some_and(|s| s.len() == 64), "{annotations}");
    // Responders and directories: rendered, their secrets referenced like the subscriptions'.
    let toml = r.config_toml();
    assert!(toml.contains("[responders.erp-queries]"), "{toml}");
    assert!(toml.contains(r#"Authorization = { file = "/run/secrets/magistral/bus-webhooks/erp-basic-auth" }"#));
    assert!(toml.contains(r#"{ file = "/run/secrets/magistral/bus-webhooks/erp-queries" }"#));
    assert!(toml.contains("[directories.items]"));
    assert!(r.env("SECRET_BUS_TOKENS_CRM").is_some());
    // The console's session key: one Secret key for every replica, referenced, never inlined.
    let key = r.env("MAGISTRAL_CONSOLE__SESSION_KEY").expect("the console session key is passed");
    assert_eq!(key["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "bus-console", "key": "session-key"}));
    assert!(key.get("value").is_none(), "{key}");
    assert!(!toml.contains("session_key"), "{toml}");
    let file = values("ha");
    assert_checks(&helm, "bus", &["-f", file.to_str().unwrap()], &r, "ha");
}

#[test]
fn default_values_render_and_check() {
    let Some(helm) = helm() else { return };
    let r = template(&helm, "magistral", &[]);
    assert_common(&r);
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 2);
    assert_eq!(r.one("PodDisruptionBudget")["spec"]["minAvailable"], 1);
    assert_eq!(r.pod()["terminationGracePeriodSeconds"], 35);
    assert_eq!(r.env_value("MAGISTRAL_NATS__URL"), Some("nats://magistral-nats:4222"));
    assert!(r.env("MAGISTRAL_CONSOLE__SESSION_KEY").is_none(), "no console key unless a Secret is named");
    // A release whose name contains "nats" is the NATS chart's full name as is.
    let r2 = template(&helm, "nats-bus", &[]);
    assert_eq!(r2.env_value("MAGISTRAL_NATS__URL"), Some("nats://nats-bus:4222"));
    assert_checks(&helm, "magistral", &[], &r, "default values");
}

/// Settings the gateway reads only at start roll the pods; what it reloads by itself does not.
#[test]
fn only_restart_settings_roll_the_pods() {
    let Some(helm) = helm() else { return };
    let checksum = |args: &[&str]| {
        let r = template(&helm, "bus", args);
        let annotations = &r.one("Deployment")["spec"]["template"]["metadata"]["annotations"];
        assert!(annotations.get("checksum/config").is_none(), "rolloutOnConfigChange is off by default");
        annotations["checksum/restart-settings"].as_str().expect("checksum/restart-settings").to_owned()
    };
    let base = checksum(&[]);
    assert_eq!(base, checksum(&["--set", "participants.p.tokens[0].sha256=00,participants.p.publish[0]=a.b"]));
    assert_ne!(base, checksum(&["--set", "config.limits.publish_timeout=2s"]));
    assert_ne!(base, checksum(&["--set", "natsConnection.url=nats://other:4222"]));
}

#[test]
fn existing_config_maps_are_mounted_by_name() {
    let Some(helm) = helm() else { return };
    let r = template(
        &helm,
        "bus",
        &[
            "--set",
            "existingConfigMap=bus-config,streams.existingConfigMap=bus-streams,contracts.existingConfigMap=bus-contracts",
        ],
    );
    assert!(r.all("ConfigMap").is_empty(), "no ConfigMap rendered when all are given by name");
    let volumes = r.pod()["volumes"].as_array().unwrap();
    for (volume, name) in [("config", "bus-config"), ("streams", "bus-streams"), ("contracts", "bus-contracts")] {
        let v = volumes.iter().find(|v| v["name"] == volume).unwrap();
        assert_eq!(v["configMap"]["name"], name);
    }
    for mount in r.container()["volumeMounts"].as_array().unwrap() {
        assert!(mount.get("subPath").is_none(), "subPath mounts never see ConfigMap updates: {mount}");
    }
}

#[test]
fn chart_refuses_inlined_secrets_and_unsafe_timing() {
    let Some(helm) = helm() else { return };
    let err =
        template_error(&helm, &["--set", "subscriptions.s.participant=p,subscriptions.s.signing_secrets[0]=whsec_abc"]);
    assert!(err.contains("subscriptions.s.signing_secrets[0]: give a reference"), "{err}");
    let err = template_error(&helm, &["--set", "participants.p.tokens[0]=plain-token-in-values"]);
    assert!(err.contains("participants.p.tokens[0]: give a reference"), "{err}");
    let err = template_error(&helm, &["--set", "shutdown.terminationGracePeriodSeconds=25"]);
    assert!(err.contains("must be longer than preStopSleepSeconds + drainTimeoutSeconds (25)"), "{err}");
    let err = template_error(&helm, &["--set", "config.limits.drain_timeout=60s"]);
    assert!(err.contains("use shutdown.drainTimeoutSeconds"), "{err}");
    let err = template_error(&helm, &["--set", "config.console.session_key=0123456789abcdef0123456789abcdef"]);
    assert!(err.contains("config.console.session_key: give a reference"), "{err}");
    let err = template_error(&helm, &["--set", "config.listen=127.0.0.1:8080"]);
    assert!(err.contains("config.listen is set by the chart"), "{err}");
    // The preStop sleep action needs Kubernetes 1.30; older clusters must opt out explicitly.
    let err = template_error(&helm, &["--kube-version", "1.28.0"]);
    assert!(err.contains("needs the preStop sleep action of Kubernetes 1.30+"), "{err}");
    let r = template(&helm, "bus", &["--kube-version", "1.28.0", "--set", "shutdown.preStopSleepSeconds=0"]);
    assert!(r.container().get("lifecycle").is_none());
    assert_eq!(r.pod()["terminationGracePeriodSeconds"], 30, "drain 20 s + 10 s");
}

/// `helm dependency build` on a copy of the stack chart (beside a copy of the magistral chart):
/// helm compares Chart.lock's digest with Chart.yaml before it fetches anything, so "out of
/// sync" is its verdict whether or not the chart repository can be reached. With `bump`, the
/// copy's NATS version is changed first and helm must find the lock out of sync.
fn assert_lock_in_sync(helm: &Path, stack: &Path, bump: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("magistral-stack");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["Chart.yaml", "Chart.lock", "values.yaml"] {
        std::fs::copy(stack.join(file), copy.join(file)).unwrap();
    }
    crate::common::copy_dir(&chart(), &dir.path().join("magistral"));
    if let Some(version) = bump {
        let text = std::fs::read_to_string(copy.join("Chart.yaml")).unwrap();
        std::fs::write(copy.join("Chart.yaml"), text.replace(&format!("\"{version}\""), "\"0.0.1\"")).unwrap();
    }
    let out = run_helm(helm, &["dependency", "build", copy.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.contains("out of sync"), bump.is_some(), "helm dependency build (bump {bump:?}):\n{stderr}");
}

/// The umbrella chart that adds the official NATS chart: its declaration, and the magistral
/// part rendered with the NATS part left out (fetching the NATS chart needs the network).
#[test]
fn stack_chart_wires_the_official_nats_chart() {
    let Some(helm) = helm() else { return };
    let stack = Path::new(REPO).join("helm/magistral-stack");
    let chart: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(stack.join("Chart.yaml")).unwrap()).unwrap();
    let deps = chart["dependencies"].as_sequence().unwrap().clone();
    let nats = deps.iter().find(|d| d["name"].as_str() == Some("nats")).expect("nats dependency");
    assert_eq!(nats["condition"].as_str(), Some("nats.enabled"));
    assert_eq!(nats["repository"].as_str(), Some("https://nats-io.github.io/k8s/helm/charts/"));
    // Pinned to one exact version, recorded in Chart.lock with the digest helm checks.
    let version = nats["version"].as_str().unwrap();
    assert!(
        version.split('.').count() == 3
            && version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "the NATS chart is pinned to an exact version, not {version:?}"
    );
    let lock: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(stack.join("Chart.lock")).unwrap()).unwrap();
    let locked = lock["dependencies"].as_sequence().unwrap();
    assert!(locked.iter().any(|d| d["name"].as_str() == Some("nats") && d["version"].as_str() == Some(version)));
    assert_lock_in_sync(&helm, &stack, None);
    assert_lock_in_sync(&helm, &stack, Some(version));
    let magistral = deps.iter().find(|d| d["name"].as_str() == Some("magistral")).expect("magistral dependency");
    assert_eq!(magistral["repository"].as_str(), Some("file://../magistral"));
    let values: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(stack.join("values.yaml")).unwrap()).unwrap();
    assert_eq!(values["nats"]["config"]["cluster"]["replicas"].as_u64(), Some(3));
    assert_eq!(values["nats"]["config"]["jetstream"]["enabled"].as_bool(), Some(true));
    // nats-server 2.15 caps a stream at 1,000 consumers (one per subscription); the NATS chart
    // merges `jetstream.merge` into nats.conf's jetstream block (rendering it needs the chart
    // from the network, so the value handed to it is what is checked).
    assert_eq!(
        values["nats"]["config"]["jetstream"]["merge"]["limits"]["default_max_consumers"].as_i64(),
        Some(-1),
        "the stack's NATS lifts the per-stream consumer cap"
    );

    // A copy without the NATS dependency, with magistral packaged into charts/.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("magistral-stack");
    std::fs::create_dir_all(copy.join("charts")).unwrap();
    std::fs::copy(stack.join("values.yaml"), copy.join("values.yaml")).unwrap();
    let mut chart = chart.clone();
    let kept: Vec<serde_norway::Value> = deps.iter().filter(|d| d["name"].as_str() != Some("nats")).cloned().collect();
    chart["dependencies"] = serde_norway::Value::Sequence(kept);
    std::fs::write(copy.join("Chart.yaml"), serde_norway::to_string(&chart).unwrap()).unwrap();
    let magistral_chart = self::chart();
    let out = run_helm(
        &helm,
        &["package", magistral_chart.to_str().unwrap(), "--destination", copy.join("charts").to_str().unwrap()],
    );
    assert!(out.status.success(), "helm package: {}", text(&out.stderr));
    let out = run_helm(&helm, &["template", "bus", copy.to_str().unwrap(), "--set", "nats.enabled=false"]);
    assert!(out.status.success(), "helm template stack: {}", text(&out.stderr));
    let r = Rendered::parse(&text(&out.stdout));
    assert_common(&r);
    assert_eq!(
        r.env_value("MAGISTRAL_NATS__URL"),
        Some("nats://bus-nats:4222"),
        "the NATS chart's service in this release"
    );
    assert_eq!(toml_setting(r.config_toml(), "replicas"), Some("3"));
}

#[test]
fn monitoring_opt_ins_render_the_shipped_rules_and_dashboard() {
    let Some(helm) = helm() else { return };
    let off = template(&helm, "bus", &[]);
    assert!(off.all("PrometheusRule").is_empty(), "the PrometheusRule is opt-in");
    assert!(
        off.all("ConfigMap").iter().all(|c| c["metadata"]["labels"]["grafana_dashboard"].is_null()),
        "the dashboard is opt-in"
    );

    let opt_in = [
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.annotations.grafana_folder=Integration",
    ];
    let r = template(&helm, "bus", &opt_in);
    assert_common(&r);

    // The rules are the canonical file's, group for group (tests/it/alerts.rs tests that file).
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["name"], "bus-magistral");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let canonical: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart().join("files/magistral-rules.yml")).unwrap()).unwrap();
    let canonical = serde_json::to_value(canonical).unwrap();
    assert!(canonical["groups"].as_array().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        rule["spec"]["groups"], canonical["groups"],
        "the rendered rule groups differ from files/magistral-rules.yml"
    );

    // The dashboard: a ConfigMap Grafana's sidecar picks up, holding the JSON unchanged.
    let dashboard = r.named("ConfigMap", "bus-magistral-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["annotations"]["grafana_folder"], "Integration");
    let rendered: Value = serde_json::from_str(dashboard["data"]["magistral.json"].as_str().unwrap()).unwrap();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("files/magistral-dashboard.json")).unwrap())
            .unwrap();
    assert_eq!(rendered, file);
    assert_eq!(rendered["uid"], "magistral-overview");

    // Another sidecar label and Grafana's namespace.
    let r = template(
        &helm,
        "bus",
        &[
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.label=dashboards",
            "--set",
            "grafanaDashboard.labelValue=magistral",
            "--set",
            "grafanaDashboard.namespace=monitoring",
        ],
    );
    let dashboard = r.named("ConfigMap", "bus-magistral-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["dashboards"], "magistral");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");

    let chart = chart();
    let mut lint = vec!["lint", "--strict", chart.to_str().unwrap()];
    lint.extend_from_slice(&opt_in);
    let out = run_helm(&helm, &lint);
    assert!(out.status.success(), "helm {lint:?}:\n{}\n{}", text(&out.stdout), text(&out.stderr));
}

/// The documented path from the root configuration to the chart (helm/magistral/README.md):
/// `scripts/helm-values` turns magistral.toml, streams/, contracts/ and transforms/ into
/// values; `scripts/helm-check` renders the chart with them and runs `magistral check` on what
/// the pods read. Exactly those commands, as a user runs them.
#[test]
fn the_root_configuration_goes_through_helm_values_and_helm_check() {
    let Some(helm) = helm() else { return };
    let scripts = Path::new(REPO).join("scripts");
    let out = Command::new(scripts.join("helm-values")).current_dir(REPO).output().expect("run scripts/helm-values");
    assert!(out.status.success(), "scripts/helm-values:\n{}", text(&out.stderr));
    let mut values: Value = serde_json::from_slice(&out.stdout).expect("the values are JSON");
    assert!(values["transforms"]["files"]["nav-sales-order.jq"].is_string());
    assert_eq!(values["subscriptions"]["nav-orders"]["transform_file"], "../transforms/nav-sales-order.jq");
    let schema = values["contracts"]["files"]["sales-order.v1.json"].as_str().unwrap().to_owned();
    serde_json::from_str::<Value>(&schema).expect("contracts stay JSON, byte for byte");

    let dir = tempfile::tempdir().unwrap();
    let check = |values: &Value| {
        let file = dir.path().join("bus-values.json");
        std::fs::write(&file, serde_json::to_vec_pretty(values).unwrap()).unwrap();
        let secrets = Path::new(REPO).join("secrets");
        helm_check(&helm, "magistral", &["-f", file.to_str().unwrap(), "--secrets", secrets.to_str().unwrap()])
    };
    let out = check(&values);
    assert!(out.status.success(), "scripts/helm-check:\n{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "configuration OK: 8 participant(s), 6 stream(s), 13 contract(s), 12 subscription(s), 1 responder(s), 4 directory(ies), 3 inbound route(s)"
        ),
        "{}",
        text(&out.stdout)
    );

    // And it fails when what the pods would read is broken: a schema that is not JSON.
    values["contracts"]["files"]["sales-order.v1.json"] = Value::String(schema.replacen('{', "{ broken", 1));
    let out = check(&values);
    assert_eq!(out.status.code(), Some(64), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("sales-order.v1.json"), "{}", text(&out.stderr));
}

/// The install notes warn when several replicas would each sign console sessions with a key of
/// their own (a session then works only on the pod that issued it).
#[test]
fn install_notes_warn_about_a_console_without_a_shared_session_key() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let notes = |args: &[&str]| {
        let mut all = vec!["install", "bus", chart.to_str().unwrap(), "--dry-run=client"];
        all.extend_from_slice(args);
        let out = run_helm(&helm, &all);
        assert!(out.status.success(), "helm {all:?}:\n{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        stdout.split_once("NOTES:").map(|(_, n)| n.to_owned()).unwrap_or_else(|| panic!("no notes:\n{stdout}"))
    };
    let warning = "console.sessionKeySecret is not set and there is more than one replica";
    assert!(notes(&[]).contains(warning), "two replicas by default");
    assert!(notes(&["--set", "autoscaling.enabled=true,replicaCount=1"]).contains(warning));
    assert!(!notes(&["--set", "replicaCount=1"]).contains(warning));
    assert!(!notes(&["--set", "console.sessionKeySecret.name=bus-console"]).contains(warning));
}
