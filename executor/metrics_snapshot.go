package executor

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// snapshotCollectors are snapshots_held and snapshot_pinned_bytes,
// registered by the first SetSnapshotUsage.
type snapshotCollectors struct {
	once   sync.Once
	held   *ratioCollector
	pinned *ratioCollector
}

// SetSnapshotUsage sets the function read at every scrape for
// snapshots_held{target} (backup snapshots held) and
// snapshot_pinned_bytes{target} (bytes of files only snapshots still
// link). fn returns target → (held, pinned bytes); it must be fast and safe
// for concurrent use.
func (m *Metrics) SetSnapshotUsage(fn func() map[string][2]float64) {
	sc := &m.snap
	sc.once.Do(func() {
		sc.held = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "snapshots_held"),
			"Backup snapshots this node holds for the target (released by post-backup or at expiry).", "target")
		sc.pinned = newRatioCollector(prometheus.BuildFQName(MetricsNamespace, "", "snapshot_pinned_bytes"),
			"Bytes of the target's files that only backup snapshots still link: what releasing them frees.", "target")
		m.reg.MustRegister(sc.held, sc.pinned)
	})
	pick := func(i int) func() map[string]float64 {
		return func() map[string]float64 {
			out := map[string]float64{}
			for t, v := range fn() {
				out[t] = v[i]
			}
			return out
		}
	}
	sc.held.set(pick(0))
	sc.pinned.set(pick(1))
}
