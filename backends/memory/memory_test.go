package memory

import (
	"context"
	"testing"

	"github.com/papyra/watcher/backends"
)

func TestMemoryBackend(t *testing.T) {
	m := New("mem")
	rep, err := m.Compact(context.Background(), backends.CompactOptions{})
	if err != nil || m.Kind() != backends.KindMemory || rep.Target != "mem" || rep.Backend != backends.KindMemory ||
		len(rep.Notes) != 1 || rep.Notes[0] != "memory backend lives inside the Papyra process: nothing to compact" {
		t.Fatalf("%+v %v", rep, err)
	}
	if err := m.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a, err := m.Scan(context.Background()); err != nil || a != nil {
		t.Fatal(a, err)
	}
	if _, err := m.Stat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m.Close() != nil {
		t.Fatal("close")
	}
}
