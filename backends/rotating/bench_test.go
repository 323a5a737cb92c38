package rotating

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/papyra/watcher/backends"
)

// BenchmarkRotatingCompact compacts a generated ~20 MB rotating set (six
// files of a set of 6, the active one overgrown as when the writer is stuck)
// to its newest 10 % of records, and, as "age", with an age limit that keeps
// the newest 10 % (every line is parsed then).
func BenchmarkRotatingCompact(b *testing.B) {
	src := b.TempDir()
	path := filepath.Join(src, "events.log")
	const maxBytes, maxFiles = 3 << 20, 6
	now := 1795600000.0
	var total int64
	seq := 0
	line := func() string {
		seq++
		return fmt.Sprintf(`{"kind":"event","system_id":"bench","actor_address":"actor://bench/worker-%d","event_type":"ActorStarted","payload":{"n":%d,"note":"%s"},"timestamp":%.3f}`+"\n",
			seq%97, seq, strings.Repeat("z", seq%40), now-1000+float64(seq)*0.002)
	}
	for i := maxFiles - 1; i >= 0; i-- {
		var sb strings.Builder
		limit := maxBytes - 400
		if i == 0 {
			limit = 5 << 20 // the overgrown active file
		}
		for sb.Len() < limit {
			sb.WriteString(line())
		}
		if err := os.WriteFile(segName(path, i), []byte(sb.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(sb.Len())
	}
	records := int64(seq)
	keep := records / 10
	age := 1000 - float64(records-keep)*0.002 - 0.001 // keeps the newest keep records
	for _, bc := range []struct {
		name string
		ret  backends.Retention
	}{
		{"count", backends.Retention{MaxRecords: &keep}},
		{"age", backends.Retention{MaxAgeSeconds: &age}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			rb, err := New(Config{Name: "bench", Path: filepath.Join(dir, "events.log"),
				MaxBytes: maxBytes, MaxFiles: maxFiles, StateDir: filepath.Join(dir, "state"), Method: backends.MethodCopy})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			for b.Loop() {
				b.StopTimer()
				for i := 0; i < maxFiles; i++ {
					data, err := os.ReadFile(segName(path, i))
					if err != nil {
						b.Fatal(err)
					}
					if err := os.WriteFile(segName(filepath.Join(dir, "events.log"), i), data, 0o644); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				rep, err := rb.Compact(context.Background(), backends.CompactOptions{Retention: bc.ret, Now: rotUnixTime(now)})
				if err != nil {
					b.Fatal(err)
				}
				if rep.AfterRecords < keep-2 || rep.AfterRecords > keep+2 {
					b.Fatalf("kept %d records, want about %d: %+v", rep.AfterRecords, keep, rep)
				}
			}
		})
	}
}
