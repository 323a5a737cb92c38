// Package rotating compacts Papyra's RotatingFilePersistence, a set of
// NDJSON files <path>, <path>.1, … <path>.<MaxFiles-1>, from outside the
// Papyra process while its writer keeps appending and rotating: New(Config)
// returns the backend. It owns the compaction (compact.go), the journaled
// commit and its recovery (commit.go) and the scan (scan.go); the comment at
// the top of rotating.go describes what a compaction produces and how.
package rotating
