//! The Lynx operator: reconciles `LynxDeployment` objects into worker Deployments, Services and
//! autoscalers.
//!
//! Planned modules: `crd` (the custom resource type), `desired` (pure spec -> child objects),
//! `reconcile` (server-side apply + status), and the process entry point in `main.rs`.
