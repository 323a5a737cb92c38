package main

// In-place compaction (method = "auto") against `cp` of the same file:
//
//   - the first compaction: one-shot `watcher compact` of a file of n
//     records kept at 0.9 n; the block index is built from scratch, so the
//     whole file is read and classified once;
//   - the steady state: one backend instance (what the daemon keeps)
//     compacts the file to 0.9 n, then, three times, n/10 newer records are
//     appended and it compacts again: only the appended part is classified.
//     It runs in a child process (this command with -steady-child) under
//     /usr/bin/time for its peak RSS, through the Go API
//     (jsonfile.New(…).Compact, as the daemon calls it).
//
// Both are measured with method = "copy" too. The appended records are
// written back to disk (fdatasync, untimed) before each steady compaction,
// as records that trickle in over minutes are by the kernel; -steady-dirty
// leaves them dirty (the collapse then writes them back itself). Every file
// is read once before it is compacted, as before cp.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/jsonfile"
)

var (
	steadyChild = flag.String("steady-child", "", "internal: run the steady-state compactions the JSON spec file describes, print the timings")
	steadyDirty = flag.Bool("steady-dirty", false, "in-place section: leave the appended records dirty in the page cache before each steady compaction")
	steadyProf  = flag.String("steady-cpuprofile", "", "with -steady-child: write a CPU profile of the steady compactions (not the first) to this file")
)

// steadySpec is what the child process does.
type steadySpec struct {
	Path, StateDir, Method string
	Keep                   int64
	Now                    int64
	// Src holds the records to append: Chunks are byte ranges of it, one
	// appended before each steady compaction.
	Src    string
	Chunks [][2]int64
	// Dirty skips the fdatasync after each append.
	Dirty bool
	// Refresh runs the retention estimator (untimed) after each append, as
	// the daemon's retention trigger does between compactions.
	Refresh bool
}

// steadyResult is what the child prints.
type steadyResult struct {
	First       time.Duration
	FirstMethod string
	Steady      []time.Duration
	Methods     []string
	Problems    []string
}

// steadyMain is the child process: New, Compact, then for each chunk:
// append, warm, Compact (timed).
func steadyMain(specPath string) {
	b, err := os.ReadFile(specPath)
	must(err)
	var sp steadySpec
	must(json.Unmarshal(b, &sp))
	j, err := jsonfile.New(jsonfile.Config{Name: "events", Path: sp.Path, StateDir: sp.StateDir, Method: sp.Method})
	must(err)
	keep := sp.Keep
	opts := backends.CompactOptions{
		Retention:        backends.Retention{MaxRecords: &keep},
		Now:              time.Unix(sp.Now, 0),
		PartialLineGrace: 876000 * time.Hour,
	}
	ctx := context.Background()
	var res steadyResult
	check := func(rep backends.Report, err error, what string) {
		if err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %v", what, err))
			return
		}
		if rep.AfterRecords != keep {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %d records kept, want %d", what, rep.AfterRecords, keep))
		}
		if fi, err := os.Stat(sp.Path); err != nil || rep.AfterBytes == nil || fi.Size() != *rep.AfterBytes {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: after_bytes %v, the file %v (%v)", what, rep.AfterBytes, fi.Size(), err))
		}
	}
	warm(sp.Path)
	t0 := time.Now()
	rep, err := j.Compact(ctx, opts)
	res.First = time.Since(t0)
	res.FirstMethod = rep.Method
	check(rep, err, "first compaction")
	src, err := os.Open(sp.Src)
	must(err)
	defer src.Close()
	if *steadyProf != "" {
		pf, err := os.Create(*steadyProf)
		must(err)
		must(pprof.StartCPUProfile(pf))
		defer pprof.StopCPUProfile()
	}
	for i, c := range sp.Chunks {
		f, err := os.OpenFile(sp.Path, os.O_WRONLY|os.O_APPEND, 0)
		must(err)
		_, err = io.Copy(f, io.NewSectionReader(src, c[0], c[1]-c[0]))
		must(err)
		if !sp.Dirty {
			must(f.Sync())
		}
		must(f.Close())
		warm(sp.Path)
		if sp.Refresh {
			_, err := j.NewEstimator().Estimate(ctx, opts.Now, opts.Retention)
			must(err)
		}
		t0 := time.Now()
		rep, err := j.Compact(ctx, opts)
		res.Steady = append(res.Steady, time.Since(t0))
		res.Methods = append(res.Methods, rep.Method)
		check(rep, err, fmt.Sprintf("steady compaction %d", i+1))
	}
	must(json.NewEncoder(os.Stdout).Encode(res))
}

// benchInPlace measures, for files of n records each: cp, the first
// compaction (auto and copy) and the steady state (auto and copy).
func benchInPlace(bin, gen string, sizes []int) {
	if t := fsType(*dir); t != "ext2/ext3" && t != "xfs" {
		fmt.Fprintf(os.Stderr, "bench: %s is on %s, which cannot collapse a range: the in-place rows would measure the copy\n", *dir, t)
	}
	fmt.Println("| what | watcher | cp | ratio to cp | peak RSS | goal |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	const chunks = 3
	var notes []string
	defer func() {
		fmt.Println()
		for _, n := range notes {
			fmt.Println(n)
		}
	}()
	for _, n := range sizes {
		chunk := n / 10
		keep := n - chunk
		src := filepath.Join(*dir, fmt.Sprintf("src-steady-%d.ndjson", n))
		if _, err := os.Stat(src); err != nil {
			run(gen, "-records", strconv.Itoa(n+chunks*chunk), "-out", src, "-now", strconv.Itoa(now))
		}
		offs := lineOffsets(src, n, chunk, chunks)
		baseEnd := offs[0]
		var ranges [][2]int64
		for i := range chunks {
			ranges = append(ranges, [2]int64{offs[i], offs[i+1]})
		}
		size := mb(baseEnd)
		work := filepath.Join(*dir, "inplace", "events.ndjson")
		state := filepath.Join(*dir, "inplace-state")
		must(os.MkdirAll(filepath.Dir(work), 0o755))

		// cp of the file of n records, as every compaction below starts
		// from one.
		var cpT, cpSyncT time.Duration
		for range *repeat {
			copyPrefix(src, work, baseEnd)
			warm(work)
			t0 := time.Now()
			run("cp", work, work+".cp")
			if d := time.Since(t0); cpT == 0 || d < cpT {
				cpT = d
			}
			os.Remove(work + ".cp")
			if d := cpSync(work, work+".cp"); cpSyncT == 0 || d < cpSyncT {
				cpSyncT = d
			}
			os.Remove(work + ".cp")
		}
		notes = append(notes, fmt.Sprintf("json %s: cp %s, cp + fsync of the copy %s (best of %d)", size,
			cpT.Round(time.Millisecond), cpSyncT.Round(time.Millisecond), *repeat))

		for _, method := range []string{"auto", "copy"} {
			cfg := writeConfig("inplace-"+method, fmt.Sprintf(`[watcher]
state_dir = %q
http_listen = ""
[policy]
partial_line_grace = "876000h"
[[target]]
name = "events"
backend = "json"
path = %q
method = %q
[target.retention]
max_records = %d
`, state, work, method, keep))
			var best time.Duration
			var rss int64
			var got string
			for range *repeat {
				os.RemoveAll(state)
				copyPrefix(src, work, baseEnd)
				warm(work)
				t, r, out := timedOut(bin, "compact", "--config", cfg, "--json", "--now", strconv.Itoa(now))
				if best == 0 || t < best {
					best = t
				}
				rss = max(rss, r)
				got = reportMethod(out)
			}
			what, goal := "first in place", "RSS ≤ 64 MB"
			if method == "copy" {
				what = "first, method = copy"
			}
			fmt.Printf("| json %s, %s: one-shot `watcher compact`, %s → %s records (ran: %s) | %s | %s | %.2f× | %d MB | %s |\n",
				size, what, comma(n), comma(keep), got, best.Round(time.Millisecond), cpT.Round(time.Millisecond),
				best.Seconds()/cpT.Seconds(), rss>>20, goal)
		}

		for _, run := range []struct {
			method  string
			refresh bool
		}{{"auto", false}, {"auto", true}, {"copy", false}} {
			method := run.method
			os.RemoveAll(state)
			must(os.MkdirAll(state, 0o755))
			copyPrefix(src, work, baseEnd)
			spec := filepath.Join(*dir, "steady.json")
			b, err := json.Marshal(steadySpec{Path: work, StateDir: state, Method: method, Keep: int64(keep), Now: now,
				Src: src, Chunks: ranges, Dirty: *steadyDirty, Refresh: run.refresh})
			must(err)
			must(os.WriteFile(spec, b, 0o644))
			self, err := os.Executable()
			must(err)
			_, rss, out := timedOut(self, "-steady-child", spec)
			var res steadyResult
			must(json.Unmarshal(out, &res))
			for _, p := range res.Problems {
				fmt.Fprintf(os.Stderr, "bench: steady state, method %s: %s\n", method, p)
			}
			best := res.Steady[0]
			var all []string
			for _, d := range res.Steady {
				best = min(best, d)
				all = append(all, d.Round(time.Millisecond).String())
			}
			what, goal := "steady state in place", "≤ 0.35× `cp` (goal 0.1×), RSS ≤ 64 MB"
			if method == "copy" {
				what, goal = "steady state, method = copy", "—"
			} else if run.refresh {
				what = "steady state in place, the retention estimator refreshed after the append (untimed, as the daemon's trigger does)"
			}
			fmt.Printf("| json %s, %s: +%s records → %s, same backend instance (ran: %s; runs %s; first %s) | %s | %s | %.2f× | %d MB | %s |\n",
				size, what, comma(chunk), comma(keep), strings.Join(res.Methods, ", "), strings.Join(all, ", "),
				res.First.Round(time.Millisecond), best.Round(time.Millisecond), cpT.Round(time.Millisecond),
				best.Seconds()/cpT.Seconds(), rss>>20, goal)
		}
		os.RemoveAll(filepath.Dir(work))
		os.RemoveAll(state)
		os.Remove(src)
	}
}

// lineOffsets returns the byte offsets of the ends of the lines n,
// n+chunk, …, n+chunks×chunk of path.
func lineOffsets(path string, n, chunk, chunks int) []int64 {
	f, err := os.Open(path)
	must(err)
	defer f.Close()
	var offs []int64
	want := n
	r := bufio.NewReaderSize(f, 1<<20)
	var off int64
	lines := 0
	for len(offs) <= chunks {
		b, err := r.ReadSlice('\n')
		off += int64(len(b))
		if err == bufio.ErrBufferFull {
			continue
		}
		must(err)
		lines++
		if lines == want {
			offs = append(offs, off)
			want += chunk
		}
	}
	return offs
}

// copyPrefix makes dst a new file (a new inode) holding the first n bytes
// of src, written back to disk as a file Papyra wrote over hours would be
// (an in-place cut would otherwise pay for writing it back: the collapse
// flushes the file's dirty pages).
func copyPrefix(src, dst string, n int64) {
	os.Remove(dst)
	in, err := os.Open(src)
	must(err)
	defer in.Close()
	out, err := os.Create(dst)
	must(err)
	_, err = io.Copy(out, io.LimitReader(in, n))
	must(err)
	must(out.Sync())
	must(out.Close())
}

// reportMethod is the method of the one report in `watcher compact --json`
// output.
func reportMethod(out []byte) string {
	var reps []struct {
		Method string   `json:"method"`
		Notes  []string `json:"notes"`
		Error  string   `json:"error"`
	}
	if err := json.Unmarshal(out, &reps); err != nil || len(reps) != 1 {
		return "?"
	}
	if reps[0].Error != "" {
		fmt.Fprintln(os.Stderr, "bench:", reps[0].Error)
	}
	if len(reps[0].Notes) > 0 {
		fmt.Fprintf(os.Stderr, "bench: notes: %q\n", reps[0].Notes)
	}
	return strings.ReplaceAll(reps[0].Method, "_", " ")
}

// fsType names the filesystem at path as stat -f does (ext4 says
// ext2/ext3).
func fsType(path string) string {
	out, err := exec.Command("stat", "-f", "-c", "%T", path).Output()
	if err != nil {
		return "unknown"
	}
	return string(bytes.TrimSpace(out))
}

// timedOut is timed, also returning the command's stdout.
func timedOut(name string, args ...string) (time.Duration, int64, []byte) {
	rssFile := filepath.Join(*dir, "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile, name}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	out, err := cmd.Output()
	el := time.Since(t0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s %v: %v\n%s\n%s", name, args, err, out, stderr.Bytes())
		os.Exit(1)
	}
	b, err := os.ReadFile(rssFile)
	must(err)
	kb, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	must(err)
	return el, kb << 10, out
}
