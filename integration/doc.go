// Package integration holds the end-to-end tests of watcher: the built
// binary, run as a subprocess against real files (and, where noted, real
// Redis and NATS servers). It has no code outside its tests.
//
// TestMain builds ./cmd/watcher once into a temporary directory. Set
// WATCHER_IT_RACE=1 to build it with the race detector (slower, but catches
// data races in the daemon while these tests drive it).
package integration
