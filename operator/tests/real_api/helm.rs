//! The Helm chart on the real API server: install, upgrade, uninstall.

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;

use crate::harness::{repo_file, Cluster};

/// `helm` of `scripts/install-k8s-tools`.
fn helm_binary() -> PathBuf {
    let helm = repo_file(".tools/k8s/bin/helm");
    assert!(
        helm.is_file(),
        "{} is missing: run scripts/install-k8s-tools",
        helm.display()
    );
    helm
}

/// Runs `helm ARGS` against the cluster; its standard output.
fn helm(args: &[&str]) -> String {
    let kubeconfig = std::env::var("LYNX_TEST_KUBECONFIG").expect("LYNX_TEST_KUBECONFIG");
    let output = Command::new(helm_binary())
        .args(args)
        .args(["--kubeconfig", &kubeconfig])
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("lynx-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("lynx-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("lynx-helm-data"),
        )
        .output()
        .expect("run helm");
    assert!(
        output.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("helm").await;
    let chart = repo_file("charts/lynx-operator");
    let chart = chart.to_str().expect("UTF-8 path");
    let release = "helm-test";
    let fullname = format!("{release}-lynx-operator");
    helm(&["install", release, chart, "-n", &ns.name]);
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let installed = deployments
        .get(&fullname)
        .await
        .expect("the operator Deployment");
    assert_eq!(installed.spec.replicas, Some(2));

    helm(&[
        "upgrade",
        release,
        chart,
        "-n",
        &ns.name,
        "--set",
        "replicaCount=1",
    ]);
    let upgraded = deployments
        .get(&fullname)
        .await
        .expect("the operator Deployment");
    assert_eq!(upgraded.spec.replicas, Some(1));

    helm(&["uninstall", release, "-n", &ns.name, "--wait"]);
    assert!(deployments.get_opt(&fullname).await.expect("get").is_none());
    let roles: Api<ClusterRole> = Api::all(cluster.admin.clone());
    assert!(
        roles.get_opt(&fullname).await.expect("get").is_none(),
        "the chart's ClusterRole is removed"
    );
    ns.delete().await;
}
