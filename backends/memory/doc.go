// Package memory is the backend of Papyra's in-memory persistence, which
// lives inside the Papyra process: New returns a backend that compacts
// nothing and says so in its report.
package memory
