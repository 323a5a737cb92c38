package main

import (
	"context"
	"fmt"
	"time"

	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

// snapshotExpiryEvery is how often expired backup snapshots are removed.
var snapshotExpiryEvery = 10 * time.Second

// Take implements triggers.Snapshotter: a backup snapshot of one file
// target, kept for ttl (0: watcher.snapshot_ttl).
func (d *daemon) Take(ctx context.Context, id string, t triggers.Target, ttl time.Duration) (snapshot.Snapshot, error) {
	d.mu.Lock()
	o, ok := d.open[t.Name]
	ttlDefault := d.cfg.Watcher.SnapshotTTL.Duration
	d.mu.Unlock()
	if !ok {
		return snapshot.Snapshot{Target: t.Name}, fmt.Errorf("target %q is not configured", t.Name)
	}
	h, ok := o.backend.(snapshot.Holder)
	if !ok {
		return snapshot.Snapshot{Target: t.Name}, fmt.Errorf("target %q (%s) cannot be snapshotted", t.Name, o.cfg.Backend)
	}
	if ttl <= 0 {
		ttl = ttlDefault
	}
	return d.snaps.Take(ctx, id, t.Name, o.cfg.Path, h, ttl)
}

// Release implements triggers.Snapshotter.
func (d *daemon) Release(id string) ([]string, error) { return d.snaps.Release(id) }

// snapshotUsage is read by the metrics at every scrape.
func (d *daemon) snapshotUsage() map[string][2]float64 {
	out := map[string][2]float64{}
	d.mu.Lock()
	for name, o := range d.open {
		if _, ok := o.backend.(snapshot.Holder); ok {
			out[name] = [2]float64{0, 0}
		}
	}
	d.mu.Unlock()
	for name, u := range d.snaps.Usage() {
		out[name] = [2]float64{float64(u.Held), float64(u.PinnedBytes)}
	}
	return out
}
