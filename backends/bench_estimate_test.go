package backends_test

import (
	"context"
	"fmt"
	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/jsonfile"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkEstimateRefresh measures one refresh of the estimator of a json
// file of WATCHER_BENCH_ESTIMATE_MB (default 200) MiB, in steady state: the
// file indexed once (first-index-s), then per iteration one estimate with an
// age and a count limit whose cuts both fall inside the file, after 4 KiB
// appended (append4KiB) or with the file unchanged (unchanged). Reproduce:
//
//	go test ./backends -run '^$' -bench EstimateRefresh -benchtime 200x -benchmem -count 5
func BenchmarkEstimateRefresh(b *testing.B) {
	mb := 200
	if v, err := strconv.Atoi(os.Getenv("WATCHER_BENCH_ESTIMATE_MB")); err == nil && v > 0 {
		mb = v
	}
	dir := b.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	t0 := float64(time.Now().Unix()) - 8*86400
	line := func(i int) string {
		return fmt.Sprintf(`{"kind":"event","system_id":"local","actor_address":"a","event_type":"e","payload":{"i":%d,"pad":"%s"},"timestamp":%.3f}`+"\n",
			i, strings.Repeat("x", 120), t0+float64(i)/100)
	}
	var sb strings.Builder
	n := 0
	for written := 0; written < mb<<20; {
		sb.Reset()
		for range 10000 {
			sb.WriteString(line(n))
			n++
		}
		f.WriteString(sb.String())
		written += sb.Len()
	}
	f.Close()
	j, err := jsonfile.New(jsonfile.Config{Name: "bench", Path: path, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		b.Fatal(err)
	}
	est := backends.NewEstimator(j)
	r := backends.Retention{MaxAgeSeconds: new(7 * 86400.0), MaxRecords: new(int64(n / 2))}
	ctx := context.Background()
	start := time.Now()
	if _, err := est.Estimate(ctx, time.Now(), r); err != nil {
		b.Fatal(err)
	}
	first := time.Since(start).Seconds()
	app, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	defer app.Close()
	for _, appendKiB := range []int{0, 4} {
		name := "unchanged"
		if appendKiB > 0 {
			name = "append4KiB"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if appendKiB > 0 {
					sb.Reset()
					for sb.Len() < appendKiB<<10 {
						sb.WriteString(line(n))
						n++
					}
					app.WriteString(sb.String())
				}
				got, err := est.Estimate(ctx, time.Now(), r)
				if err != nil {
					b.Fatal(err)
				}
				if got.ReclaimableRecords == 0 {
					b.Fatal("the cuts do not fall inside the file")
				}
			}
			b.ReportMetric(first, "first-index-s")
		})
	}
}
