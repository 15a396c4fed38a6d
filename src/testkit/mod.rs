//! Test kit: a fake Nango server for tests and local development.
