package jsonfile

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
)

// benchData is a generated Papyra-shaped file of about 20 MB (the shapes of
// tools/genpapyra), built once.
var benchData = sync.OnceValue(func() []byte {
	rng := rand.New(rand.NewPCG(1, 1))
	var b []byte
	for i := 0; len(b) < 20<<20; i++ {
		ts := 1795500000 + float64(i)*0.01
		switch rng.IntN(20) {
		case 0:
			b = fmt.Appendf(b, `{"kind": "audit", "system_id": "local", "timestamp": %.2f, "total_actors": 18, "alive_actors": 9, "stopping_actors": 1, "restarting_actors": 0, "registry_size": 3, "registry_orphans": [], "registry_dead": ["gone"], "dead_letters_count": %d}`+"\n", ts, i)
		case 1:
			b = fmt.Appendf(b, `{"kind": "dead_letter", "system_id": "local", "target": null, "message_type": "Ping", "payload": {"seq": %d}, "timestamp": %.2f}`+"\n", i, ts)
		default:
			b = fmt.Appendf(b, `{"kind": "event", "system_id": "local", "actor_address": "local://worker/%d", "event_type": "ActorStarted", "payload": {"seq": %d, "note": "hello"}, "timestamp": %.2f}`+"\n", i%7, i, ts)
		}
	}
	return b
})

// benchCompact compacts a fresh copy of the 20 MB file per iteration, with
// method copy.
func benchCompact(b *testing.B, r backends.Retention, dry bool) {
	data := benchData()
	dir := b.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	j, err := New(Config{Name: "bench", Path: path, StateDir: filepath.Join(dir, "state"), Method: backends.MethodCopy})
	if err != nil {
		b.Fatal(err)
	}
	old := drainQuiet
	drainQuiet = time.Millisecond // no writer here; do not measure the drain wait
	defer func() { drainQuiet = old }()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := j.Compact(context.Background(), backends.CompactOptions{Retention: r, Now: time.Unix(1795600000, 0), DryRun: dry}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompactCount10Percent(b *testing.B) {
	benchCompact(b, backends.Retention{MaxRecords: backends.Int64(11000)}, false)
}

func BenchmarkCompactCount10PercentDryRun(b *testing.B) {
	benchCompact(b, backends.Retention{MaxRecords: backends.Int64(11000)}, true)
}

func BenchmarkCompactAgeHalf(b *testing.B) {
	age := 600.0 // half of the ~1200 s the file spans
	benchCompact(b, backends.Retention{MaxAgeSeconds: &age}, false)
}

func BenchmarkCompactNoRetention(b *testing.B) {
	benchCompact(b, backends.Retention{}, false)
}

// BenchmarkInPlaceSteadyState is the steady state of method auto: the file
// holds the newest 90 % of the 20 MB data, the other 10 % is appended, and
// the same backend compacts it back to 90 % in place. Each iteration
// appends and compacts; the index is the backend's, kept between them.
// Bytes per second are of the whole file, as for the copy benchmarks.
func BenchmarkInPlaceSteadyState(b *testing.B) { benchInPlaceSteady(b, false) }

// BenchmarkInPlaceSteadyStateAfterRefresh is the daemon's steady state: the
// retention trigger's estimator refreshed after the append (not timed), so
// the compaction finds the appended lines already in the shared index.
func BenchmarkInPlaceSteadyStateAfterRefresh(b *testing.B) { benchInPlaceSteady(b, true) }

func benchInPlaceSteady(b *testing.B, refresh bool) {
	data := benchData()
	lines := bytes.SplitAfter(data, []byte("\n"))
	lines = lines[:len(lines)-1]
	keep := len(lines) * 9 / 10
	dir := b.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	j, err := New(Config{Name: "bench", Path: path, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Join(lines[:keep], nil), 0o644); err != nil {
		b.Fatal(err)
	}
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(int64(keep))}, Now: time.Unix(1795600000, 0)}
	if _, err := j.Compact(context.Background(), opts); err != nil {
		b.Fatal(err)
	}
	next := keep
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		var app []byte
		for k := 0; k < len(lines)-keep; k++ {
			app = append(app, lines[(next+k)%len(lines)]...)
		}
		next += len(lines) - keep
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(app); err != nil {
			b.Fatal(err)
		}
		f.Close()
		if refresh {
			if _, err := j.NewEstimator().Estimate(context.Background(), opts.Now, opts.Retention); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		rep, err := j.Compact(context.Background(), opts)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Method != backends.MethodInPlace {
			b.Fatalf("method %q (notes %v): this filesystem cannot collapse; run the benchmark on ext4 or XFS", rep.Method, rep.Notes)
		}
	}
}
