package memory

import (
	"context"

	"github.com/papyra/watcher/backends"
)

// memoryNote is the note of every memory compaction report.
const memoryNote = "memory backend lives inside the Papyra process: nothing to compact"

// memory is a target of backend "memory": Papyra's in-process store, which
// nothing outside the process can reach. Every operation is a no-op.
type memory struct{ name string }

// New returns the backend of a memory target named name. Its Compact
// changes nothing and returns a report with a note saying so.
func New(name string) backends.Backend { return memory{name: name} }

func (m memory) Kind() string { return backends.KindMemory }

func (m memory) Compact(ctx context.Context, opts backends.CompactOptions) (backends.Report, error) {
	r := backends.Report{Target: m.name, Backend: backends.KindMemory, DryRun: opts.DryRun, Method: backends.MethodNone, Notes: []string{memoryNote}}
	r.Finish()
	return r, nil
}

func (m memory) Stat(ctx context.Context) (backends.Stat, error) {
	return backends.Stat{Bytes: -1}, nil
}

func (m memory) Scan(ctx context.Context) ([]backends.Anomaly, error) { return nil, nil }

func (m memory) Recover(ctx context.Context) error { return nil }

func (m memory) Close() error { return nil }
