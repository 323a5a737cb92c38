package ndjson

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
)

// TestOpenForEstimateRefuses: the estimator opens a target's files as the
// compactions do. A FIFO is refused at once (not waited on), a symbolic
// link at the file's name is refused whatever follow_symlinks says (the
// backends resolve the target's link before they open it), a directory
// whose name is a symbolic link only with follow_symlinks; a missing file
// or directory is an empty target.
func TestOpenForEstimateRefuses(t *testing.T) {
	base := t.TempDir()
	data, outside := filepath.Join(base, "data"), filepath.Join(base, "outside")
	for _, d := range []string{data, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rec := []byte(`{"kind": "event", "timestamp": 1795600000.5}` + "\n")
	for _, p := range []string{filepath.Join(data, "t.ndjson"), filepath.Join(outside, "o.ndjson")} {
		if err := os.WriteFile(p, rec, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fifo := filepath.Join(data, "fifo.ndjson")
	testutil.Mkfifo(t, fifo)
	t.Cleanup(func() { testutil.UnblockFIFO(fifo) })
	link := filepath.Join(data, "link.ndjson")
	if err := os.Symlink(filepath.Join(outside, "o.ndjson"), link); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(data, "fifolink.ndjson")
	if err := os.Symlink("fifo.ndjson", fifoLink); err != nil {
		t.Fatal(err)
	}
	dirLink := filepath.Join(base, "datalink")
	if err := os.Symlink("data", dirLink); err != nil {
		t.Fatal(err)
	}

	for _, follow := range []bool{false, true} {
		testutil.Within(t, 5*time.Second, "OpenForEstimate of a FIFO", func() {
			f, _, err := OpenForEstimate(fifo, follow)
			if f != nil {
				f.Close()
			}
			if !errors.Is(err, backends.ErrNotRegular) || !strings.Contains(err.Error(), "FIFO") {
				t.Errorf("FIFO (follow %v): got %v, want ErrNotRegular naming a FIFO", follow, err)
			}
		})
		for _, p := range []string{link, fifoLink} {
			testutil.Within(t, 5*time.Second, "OpenForEstimate of a symbolic link", func() {
				f, _, err := OpenForEstimate(p, follow)
				if f != nil {
					f.Close()
				}
				if !errors.Is(err, backends.ErrSymlink) {
					t.Errorf("%s (follow %v): got %v, want ErrSymlink", p, follow, err)
				}
			})
		}
		f, fi, err := OpenForEstimate(filepath.Join(dirLink, "t.ndjson"), follow)
		switch {
		case follow && (err != nil || fi.Size() != int64(len(rec))):
			t.Errorf("through a linked directory with follow: %v %v", fi, err)
		case !follow && !errors.Is(err, backends.ErrSymlink):
			t.Errorf("through a linked directory without follow: got %v, want ErrSymlink", err)
		}
		if f != nil {
			f.Close()
		}
		for _, p := range []string{filepath.Join(data, "missing.ndjson"), filepath.Join(base, "nodir", "t.ndjson")} {
			if f, _, err := OpenForEstimate(p, follow); f != nil || err != nil {
				t.Errorf("%s: got %v %v, want nothing (an empty target)", p, f, err)
			}
		}
	}

	// The estimator itself: a link among its files fails the estimate
	// instead of counting the link's target.
	e := NewFileEstimator(func(context.Context) ([]string, error) {
		return []string{filepath.Join(data, "t.ndjson"), link}, nil
	}, false)
	if _, err := e.Estimate(context.Background(), time.Unix(1795600000, 0), backends.Retention{}); !errors.Is(err, backends.ErrSymlink) {
		t.Errorf("estimate over a link: got %v, want ErrSymlink", err)
	}
}
