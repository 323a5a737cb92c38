package backends

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
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

func BenchmarkClassifyLine(b *testing.B) {
	line := []byte(`{"kind": "event", "system_id": "local", "actor_address": "local://worker/3", "event_type": "ActorStarted", "payload": {"seq": 12345, "note": "hello", "timestamp": 5}, "timestamp": 1795599998.25}`)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		ClassifyLine(line)
	}
}

func BenchmarkCut(b *testing.B) {
	age := 3600.0
	r := Retention{MaxAgeSeconds: &age, MaxTotalBytes: Int64(1 << 62)}
	info := LineInfo{Record: true, HasTimestamp: true, Timestamp: 1795599998}
	b.ReportAllocs()
	c := r.NewCut(time.Unix(1795600000, 0))
	for b.Loop() {
		c.Offer(info, 190)
	}
}

// benchCompact compacts a fresh copy of the 20 MB file per iteration.
func benchCompact(b *testing.B, r Retention, dry bool) {
	data := benchData()
	dir := b.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	j, err := NewJSON(JSONConfig{Name: "bench", Path: path, StateDir: filepath.Join(dir, "state")})
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
		if _, err := j.Compact(context.Background(), CompactOptions{Retention: r, Now: time.Unix(1795600000, 0), DryRun: dry}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompactCount10Percent(b *testing.B) {
	benchCompact(b, Retention{MaxRecords: Int64(11000)}, false)
}

func BenchmarkCompactCount10PercentDryRun(b *testing.B) {
	benchCompact(b, Retention{MaxRecords: Int64(11000)}, true)
}

func BenchmarkCompactAgeHalf(b *testing.B) {
	age := 600.0 // half of the ~1200 s the file spans
	benchCompact(b, Retention{MaxAgeSeconds: &age}, false)
}

func BenchmarkCompactNoRetention(b *testing.B) {
	benchCompact(b, Retention{}, false)
}
