// Command genpapyra writes a Papyra-shaped NDJSON file for benchmarks and
// manual measurements: mostly events of about 190 bytes, some audits and
// dead letters, in json.dumps style (", " and ": " separators), with
// increasing timestamps ending at -now.
//
//	go run ./tools/genpapyra -records 1000000 -out /tmp/events.ndjson [-seed N] [-now UNIX]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
)

var eventTypes = []string{"ActorStarted", "ActorStopped", "ActorCrashed", "ActorRestarted", "MessageProcessed"}

// line appends record i of n (timestamp ts) to b.
func line(b []byte, rng *rand.Rand, i int, ts float64) []byte {
	tsText := strconv.FormatFloat(ts, 'f', -1, 64)
	if ts == float64(int64(ts)) {
		tsText += ".0"
	}
	switch k := rng.IntN(20); {
	case k == 0:
		b = fmt.Appendf(b, `{"kind": "audit", "system_id": "local", "timestamp": %s, "total_actors": %d, "alive_actors": %d, "stopping_actors": 1, "restarting_actors": 0, "registry_size": 3, "registry_orphans": [], "registry_dead": ["gone"], "dead_letters_count": %d}`,
			tsText, 10+rng.IntN(90), rng.IntN(10), i%1000)
	case k == 1:
		b = fmt.Appendf(b, `{"kind": "dead_letter", "system_id": "local", "target": null, "message_type": "Ping", "payload": {"seq": %d}, "timestamp": %s}`, i, tsText)
	default:
		b = fmt.Appendf(b, `{"kind": "event", "system_id": "local", "actor_address": "local://pool/worker/%d", "event_type": "%s", "payload": {"seq": %d, "note": "hello, papyra"}, "timestamp": %s}`,
			rng.IntN(7), eventTypes[rng.IntN(len(eventTypes))], i, tsText)
	}
	return append(b, '\n')
}

func main() {
	records := flag.Int("records", 1000000, "number of records")
	out := flag.String("out", "", "output file (required)")
	seed := flag.Uint64("seed", 1, "random seed")
	now := flag.Float64("now", 1795600000, "timestamp of the last record (Unix seconds)")
	flag.Parse()
	if *out == "" || *records < 0 {
		fmt.Fprintln(os.Stderr, "genpapyra: -out is required and -records must not be negative")
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "genpapyra:", err)
		os.Exit(1)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15))
	var b []byte
	for i := range *records {
		// One record every 10 ms, ending at -now.
		ts := *now - float64(*records-1-i)*0.01
		ts = float64(int64(ts*100+0.5)) / 100
		b = line(b[:0], rng, i, ts)
		w.Write(b)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "genpapyra:", err)
		os.Exit(1)
	}
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "genpapyra:", err)
		os.Exit(1)
	}
}
