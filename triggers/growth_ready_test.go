package triggers

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/papyra/watcher/policy"
)

// Ready is closed once every target is watched and has its baseline, so an
// append right after it is seen.
func TestGrowthReadyThenAppendFires(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	if err := os.WriteFile(path, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	g := NewGrowth([]Target{{Name: "events", Backend: "json", Files: []string{path},
		Growth: GrowthSettings{MinBytes: 100, MinRatio: 0.1}}}, nil)
	select {
	case <-g.Ready():
		t.Fatal("ready before Run")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan policy.Signal, 4)
	go g.Run(ctx, func(s policy.Signal) { sigs <- s })
	select {
	case <-g.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	if st := g.Status(); len(st) != 1 || st[0].Baseline != 1000 {
		t.Fatalf("status at ready: %+v", st)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 500))
	f.Close()
	select {
	case s := <-sigs:
		if s.Kind != policy.KindGrowth || len(s.Targets) != 1 || s.Targets[0] != "events" {
			t.Fatalf("signal %+v", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no growth signal after an append right after Ready")
	}
}
