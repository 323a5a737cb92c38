package rotating

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// Scan reads the set without changing it and reports, per file (oldest
// first, line numbers from 1): lines that are not records, an unterminated
// last line (for the active file it may also be a write in flight), records
// without a numeric timestamp, records of an unknown kind; then files named
// <path>.<n> with n >= MaxFiles (orphans, never read nor touched by a
// compaction), and leftovers: staging directories and temporary files of an
// interrupted compaction, its journal, Papyra's own *.compact.tmp files. At
// most MaxAnomaliesPerType anomalies of one type are listed, then one more
// summarising the rest.
func (r *Set) Scan(ctx context.Context) ([]backends.Anomaly, error) {
	path, err := r.resolve()
	if err != nil {
		return nil, err
	}
	a := ndjson.NewAnomalies(r.cfg.Name)
	r.scanSet(ctx, a, path)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	state, err := fsx.OpenDir(r.cfg.StateDir, true)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		a.Add(backends.AnomalyUnreadable, r.cfg.StateDir, func() string { return err.Error() })
	default:
		defer state.Close()
		if _, err := state.Lstat(r.journalName(path)); err == nil {
			a.Add(backends.AnomalyLeftover, r.journalPath(path), func() string {
				return "journal of an interrupted compaction (Recover completes or rolls it back)"
			})
		}
	}
	return a.Result(), nil
}

// scanSet adds to a the anomalies of the files of the set whose active file
// is path and of its directory. A name that is not a regular file (a FIFO,
// a link, ...) is unreadable, never opened.
func (r *Set) scanSet(ctx context.Context, a *ndjson.Anomalies, path string) {
	ds, err := r.openSetDir(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		a.Add(backends.AnomalyUnreadable, filepath.Dir(path), func() string { return err.Error() })
		return
	}
	defer ds.close()
	for i := r.cfg.MaxFiles - 1; i >= 0; i-- {
		if ctx.Err() != nil {
			return
		}
		name := segName(path, i)
		f, _, err := ds.dir.OpenRegular(segName(ds.base, i), os.O_RDONLY, 0)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			a.Add(backends.AnomalyUnreadable, name, func() string { return err.Error() })
			continue
		}
		err = ndjson.ScanLines(ctx, a, f, name)
		f.Close()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.Add(backends.AnomalyUnreadable, name, func() string { return err.Error() })
		}
	}
	dir, base := ds.dir.Path, ds.base
	entries, err := ds.dir.ReadDir()
	if err != nil {
		a.Add(backends.AnomalyUnreadable, dir, func() string { return err.Error() })
	}
	for _, e := range entries {
		name := e.Name()
		full := filepath.Join(dir, name)
		switch {
		case strings.HasPrefix(name, base+"."):
			suffix := name[len(base)+1:]
			if n, err := strconv.Atoi(suffix); err == nil && suffix == strconv.Itoa(n) {
				if n >= r.cfg.MaxFiles {
					a.Add(backends.AnomalyOrphanFile, full, func() string {
						return fmt.Sprintf("segment index %d is beyond max_files-1 = %d: neither read nor compacted", n, r.cfg.MaxFiles-1)
					})
				}
				continue
			}
			if strings.HasSuffix(name, ".compact.tmp") || strings.HasSuffix(name, ".recovered.tmp") {
				a.Add(backends.AnomalyLeftover, full, func() string { return "temporary file of an interrupted Papyra compaction or recovery" })
			}
		case strings.HasPrefix(name, rotStagingPrefix(base)):
			a.Add(backends.AnomalyLeftover, full, func() string {
				return "staging directory of an interrupted compaction (Recover completes or removes it)"
			})
		case strings.HasPrefix(name, fsx.TempPrefix(base)):
			a.Add(backends.AnomalyLeftover, full, func() string { return "temporary file of an interrupted compaction" })
		}
	}
}
