// Command compactonce compacts one json file once with the json backend, for
// manual measurements (time, peak RSS) without the CLI:
//
//	go run ./tools/compactonce -path /tmp/events.ndjson -max-records 100000
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/papyra/watcher/backends"
)

func main() {
	path := flag.String("path", "", "absolute path of the NDJSON file")
	maxRecords := flag.Int64("max-records", -1, "max_records (-1: unset)")
	maxAge := flag.Float64("max-age", -1, "max_age_seconds (-1: unset)")
	now := flag.Float64("now", 0, "now for age limits (0: the clock)")
	dry := flag.Bool("dry-run", false, "dry run")
	flag.Parse()
	abs, err := filepath.Abs(*path)
	if err != nil || *path == "" {
		fmt.Fprintln(os.Stderr, "compactonce: -path is required")
		os.Exit(2)
	}
	b, err := backends.NewJSON(backends.JSONConfig{Name: "bench", Path: abs, StateDir: filepath.Join(os.TempDir(), "compactonce-state")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "compactonce:", err)
		os.Exit(2)
	}
	var r backends.Retention
	if *maxRecords >= 0 {
		r.MaxRecords = maxRecords
	}
	if *maxAge >= 0 {
		r.MaxAgeSeconds = maxAge
	}
	t := time.Now()
	if *now > 0 {
		t = time.Unix(int64(*now), 0)
	}
	start := time.Now()
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: r, Now: t, DryRun: *dry, PartialLineGrace: 30 * time.Second})
	elapsed := time.Since(start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compactonce:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(rep)
	fmt.Printf("%s\nelapsed %v\n", out, elapsed)
}
