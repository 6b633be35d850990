//! The IoT Edge solution files: valid JSON, routes that name the module's real input and output,
//! twin values the module itself accepts, the optional metrics-collector scraping the module where
//! it serves `/metrics`, and Dockerfiles that build with the CI script.

use edgefilter::settings::{apply_desired, Settings, Source};
use serde_json::Value;

fn read(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"))
}

#[test]
fn deployment_routes_use_the_modules_input_and_output() {
    let d = read("deployment.template.json");
    let modules = &d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"];
    assert_eq!(modules["edgefilter"]["settings"]["image"], "${MODULES.edgefilter}");
    assert!(modules["SimulatedTemperatureSensor"].is_object());
    let routes = d["modulesContent"]["$edgeHub"]["properties.desired"]["routes"].as_object().unwrap();
    let routes: Vec<&str> = routes.values().map(|v| v.as_str().unwrap()).collect();
    let into_filter = format!("INTO BrokeredEndpoint(\"/modules/edgefilter/inputs/{}\")", edgefilter::filter::INPUT);
    assert!(routes
        .iter()
        .any(|r| r.starts_with("FROM /messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput")
            && r.ends_with(&into_filter)));
    let from_filter =
        format!("FROM /messages/modules/edgefilter/outputs/{} INTO $upstream", edgefilter::filter::OUTPUT);
    assert!(routes.contains(&from_filter.as_str()), "{routes:?}");
}

#[test]
fn deployment_twin_values_pass_the_modules_validation() {
    let d = read("deployment.template.json");
    let desired = d["modulesContent"]["edgefilter"]["properties.desired"].as_object().unwrap();
    let applied = apply_desired(&Settings::default(), &Settings::default(), desired, Source::FullTwin);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let known: Vec<&str> = edgefilter::settings::names().collect();
    for key in desired.keys() {
        assert!(known.contains(&key.as_str()), "{key} is not a setting of the module");
    }
}

#[test]
fn the_optional_metrics_collector_scrapes_edgehub_edgeagent_and_the_module() {
    let d = read("deployment.template.json");
    let modules = &d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"];
    let collector = &modules["metricsCollector"];
    let image = collector["settings"]["image"].as_str().unwrap();
    assert!(image.starts_with("mcr.microsoft.com/azureiotedge-metrics-collector:"), "{image}");
    // Optional: it needs a Log Analytics workspace, so it is deployed stopped.
    assert_eq!(collector["status"], "stopped");
    let env = &collector["env"];
    let endpoints = env["MetricsEndpointsCSV"]["value"].as_str().unwrap();
    assert_eq!(endpoints, "http://edgeHub:9600/metrics,http://edgeAgent:9600/metrics,http://edgefilter:9600/metrics");
    assert!(modules["edgefilter"].is_object(), "the module is reached by its name in the deployment");
    for key in ["ResourceId", "LogAnalyticsWorkspaceId", "LogAnalyticsSharedKey"] {
        assert!(env[key]["value"].is_string(), "{key} is shown for the operator to fill in");
    }
    // The module serves /metrics on 9600 unless told otherwise.
    let cs = "HostName=h;DeviceId=d;ModuleId=edgefilter;SharedAccessKey=c2VjcmV0";
    let config =
        edgefilter::config::resolve(|n| (n == "EdgeHubConnectionString").then(|| cs.to_string()), None).unwrap();
    assert_eq!(config.metrics_addr.map(|a| a.port()), Some(9600));
}

#[test]
fn module_json_names_both_dockerfiles() {
    let m = read("modules/edgefilter/module.json");
    let platforms = m["image"]["tag"]["platforms"].as_object().unwrap();
    for (platform, file) in [("amd64", "Dockerfile.amd64"), ("arm32v7", "Dockerfile.arm32v7")] {
        let path = platforms[platform].as_str().unwrap();
        assert!(path.ends_with(file));
        let resolved = std::path::Path::new("modules/edgefilter").join(path);
        let dockerfile = std::fs::read_to_string(&resolved).unwrap_or_else(|e| panic!("{}: {e}", resolved.display()));
        assert!(dockerfile.contains("scripts/build-release.sh"), "{file} builds with the CI script");
        assert!(dockerfile.contains("USER 10001"), "{file} runs as non-root");
    }
    assert_eq!(m["image"]["tag"]["version"], env!("CARGO_PKG_VERSION"));
}
