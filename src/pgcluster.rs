//! A throwaway PostgreSQL cluster (initdb into a temp dir, TLS on, random port) for the demo
//! and the integration tests. Stub: lands on the `harness` branch.
