//! The operator against a real API server: kube-apiserver and kube-controller-manager started by
//! `scripts/control-plane` (no kubelet: pods stay Pending), named by `LYNX_TEST_KUBECONFIG`.
//! `scripts/test` starts one when `LYNX_K8S_BIN_DIR` names the binaries; without it every test
//! here prints why it is skipped and passes. The operator runs as its own binary, as its own
//! service account, so `deploy/rbac.yaml` is what is tested. The tests run one at a time
//! (`.config/nextest.toml`), each in its own namespace with its own Lease.

mod children;
mod harness;
mod helm;
mod kubelet;
mod leader;
mod model_delivery;
mod routing;
mod samples;
mod scale;
