//! Reconcile tests against a mocked API server (tower-test): each test scripts the requests the
//! operator must make, in order, and the API server's answers.

mod api_server;
mod model_ready;
mod model_scenarios;
mod scenarios;
mod status;
