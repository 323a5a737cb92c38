package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Scan reads the set without changing it and reports, per file (oldest
// first, line numbers from 1): lines that are not records, an unterminated
// last line (for the active file it may also be a write in flight), records
// without a numeric timestamp, records of an unknown kind; then files named
// <path>.<n> with n >= MaxFiles (orphans, never read nor touched by a
// compaction), and leftovers: staging directories and temporary files of an
// interrupted compaction, its journal, Papyra's own *.compact.tmp files. At
// most maxAnomaliesPerType anomalies of one type are listed, then one more
// summarising the rest.
func (r *Rotating) Scan(ctx context.Context) ([]Anomaly, error) {
	path, err := r.resolve()
	if err != nil {
		return nil, err
	}
	a := newAnomalies(r.cfg.Name)
	for i := r.cfg.MaxFiles - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		name := segName(path, i)
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			a.add(AnomalyUnreadable, name, func() string { return err.Error() })
			continue
		}
		err = scanLines(ctx, a, f, name)
		f.Close()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			a.add(AnomalyUnreadable, name, func() string { return err.Error() })
		}
	}
	dir, base := filepath.Dir(path), filepath.Base(path)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.add(AnomalyUnreadable, dir, func() string { return err.Error() })
	}
	for _, e := range entries {
		name := e.Name()
		full := filepath.Join(dir, name)
		switch {
		case strings.HasPrefix(name, base+"."):
			suffix := name[len(base)+1:]
			if n, err := strconv.Atoi(suffix); err == nil && suffix == strconv.Itoa(n) {
				if n >= r.cfg.MaxFiles {
					a.add(AnomalyOrphanFile, full, func() string {
						return fmt.Sprintf("segment index %d is beyond max_files-1 = %d: neither read nor compacted", n, r.cfg.MaxFiles-1)
					})
				}
				continue
			}
			if strings.HasSuffix(name, ".compact.tmp") || strings.HasSuffix(name, ".recovered.tmp") {
				a.add(AnomalyLeftover, full, func() string { return "temporary file of an interrupted Papyra compaction or recovery" })
			}
		case strings.HasPrefix(name, rotStagingPrefix(base)):
			a.add(AnomalyLeftover, full, func() string {
				return "staging directory of an interrupted compaction (Recover completes or removes it)"
			})
		case strings.HasPrefix(name, tempPrefix(base)):
			a.add(AnomalyLeftover, full, func() string { return "temporary file of an interrupted compaction" })
		}
	}
	jp := r.journalPath(path)
	if _, err := os.Stat(jp); err == nil {
		a.add(AnomalyLeftover, jp, func() string {
			return "journal of an interrupted compaction (Recover completes or rolls it back)"
		})
	}
	return a.result(), nil
}
