package influx

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api/query"

	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Latest returns the newest sample of each metric of the device, sorted by
// metric name, straight from InfluxDB (so it is right after a restart).
func (s *Store) Latest(ctx context.Context, device string) ([]telemetry.Sample, error) {
	if device == "" {
		return nil, errors.New("influx latest: empty device id")
	}
	// The whole time range, future timestamps included (device clocks
	// drift); range() needs an explicit stop for that.
	flux := s.from(minTS, maxTS) +
		` |> filter(fn: (r) => r._measurement == ` + fluxString(s.opts.Measurement) + ` and r.device == ` + fluxString(device) + `)` +
		` |> last()`
	latest := map[string]telemetry.Sample{}
	err := s.run(ctx, flux, func(r *query.FluxRecord) {
		v, ok := toFloat(r.Value())
		if !ok {
			return
		}
		x := telemetry.Sample{Device: device, Metric: r.Field(), TS: r.Time().UnixMilli(), Value: v}
		// A field written with two types (by someone else) comes back as two
		// tables: keep the newer.
		if old, seen := latest[x.Metric]; !seen || x.TS > old.TS {
			latest[x.Metric] = x
		}
	})
	if err != nil {
		return nil, fmt.Errorf("influx latest %q: %w", device, err)
	}
	out := make([]telemetry.Sample, 0, len(latest))
	for _, x := range latest {
		out = append(out, x)
	}
	slices.SortFunc(out, func(a, b telemetry.Sample) int { return strings.Compare(a.Metric, b.Metric) })
	return out, nil
}

// Series returns the points of one metric in [From, To], raw or bucketed
// (see store.SeriesQuery). Step is used at millisecond precision.
func (s *Store) Series(ctx context.Context, q store.SeriesQuery) ([]store.Point, error) {
	flux, err := s.seriesFlux(q)
	if err != nil {
		return nil, fmt.Errorf("influx series: %w", err)
	}
	if flux == "" {
		return nil, nil
	}
	bucketed := q.Step > 0
	var pts []store.Point
	err = s.run(ctx, flux, func(r *query.FluxRecord) {
		v, ok := toFloat(r.Value())
		if !ok {
			return
		}
		ts := r.Time()
		if bucketed {
			ts = r.Start() // each window's table carries its bounds
		}
		pts = append(pts, store.Point{TS: ts.UnixMilli(), Value: v})
	})
	if err != nil {
		return nil, fmt.Errorf("influx series %q %q: %w", q.Device, q.Metric, err)
	}
	// One table per window (and per field type): restore time order.
	slices.SortStableFunc(pts, func(a, b store.Point) int { return cmp.Compare(a.TS, b.TS) })
	return pts, nil
}

func (s *Store) seriesFlux(q store.SeriesQuery) (string, error) {
	if q.Device == "" || q.Metric == "" {
		return "", errors.New("device and metric are required")
	}
	if q.To < q.From {
		return "", fmt.Errorf("empty range: to %d < from %d", q.To, q.From)
	}
	if q.Step < 0 {
		return "", fmt.Errorf("negative step %s", q.Step)
	}
	from, to := max(q.From, minTS), min(q.To, maxTS)
	if to < from {
		return "", nil // wholly outside what InfluxDB can hold: nothing to ask
	}
	var b strings.Builder
	b.WriteString(s.from(from, to))
	b.WriteString(` |> filter(fn: (r) => r._measurement == ` + fluxString(s.opts.Measurement) +
		` and r.device == ` + fluxString(q.Device) + ` and r._field == ` + fluxString(q.Metric) + `)`)
	if q.Step == 0 {
		return b.String(), nil
	}
	agg, err := store.ParseAgg(string(q.Agg))
	if err != nil {
		return "", err
	}
	fn := map[store.Agg]string{store.AggAvg: "mean", store.AggMin: "min", store.AggMax: "max", store.AggLast: "last"}[agg]
	step := max(q.Step.Truncate(time.Millisecond), time.Millisecond).Nanoseconds()
	// Flux windows start at multiples of every since the epoch, shifted by
	// offset: shift them so that one starts at From. (aggregateWindow has no
	// offset in the Flux of InfluxDB 1.8, so window + fn.)
	stepMS := step / int64(time.Millisecond)
	offset := ((q.From%stepMS + stepMS) % stepMS) * int64(time.Millisecond)
	fmt.Fprintf(&b, ` |> window(every: %dns, offset: %dns, createEmpty: false) |> %s()`, step, offset, fn)
	return b.String(), nil
}

// from is the start of every query: the bucket and the range [start, end]
// in unix ms, both inclusive. Flux's range stop is exclusive in InfluxDB 2.x
// but inclusive in 1.8 (its storage reads end inclusively), so stop is one
// nanosecond after end: right with both, as samples have ms precision.
func (s *Store) from(start, end int64) string {
	return `from(bucket: ` + fluxString(s.opts.Bucket) + `) |> range(start: ` + fluxTime(start*int64(time.Millisecond)) +
		`, stop: ` + fluxTime(end*int64(time.Millisecond)+1) + `)`
}

// run executes a Flux query and calls fn for every record.
func (s *Store) run(ctx context.Context, flux string, fn func(*query.FluxRecord)) error {
	res, err := s.querier.Query(ctx, flux)
	if err != nil {
		if res != nil {
			res.Close()
		}
		s.m.queryFailures.Inc()
		return s.queryError(err)
	}
	defer res.Close()
	for res.Next() {
		fn(res.Record())
	}
	if err := res.Err(); err != nil {
		s.m.queryFailures.Inc()
		return s.queryError(err)
	}
	s.m.up.Set(1)
	return nil
}

// queryError turns the client's error into a plain one (no influx types
// leave this package) and keeps context errors matchable.
func (s *Store) queryError(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if kind, _, _ := classify(err, false); kind == kindConnection {
		s.m.up.Set(0)
	}
	return errors.New(err.Error())
}

// fluxString quotes s as a Flux string literal. It is strict: only
// printable ASCII other than `"`, `\` and `$` (which starts an
// interpolation, "${...}") passes as is; those three are backslash-escaped
// and every other byte is written as \xNN, so no input can end the literal
// or inject Flux.
func fluxString(s string) string {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\' || c == '$':
			b = append(b, '\\', c)
		case c >= 0x20 && c < 0x7f:
			b = append(b, c)
		default:
			b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
		}
	}
	return string(append(b, '"'))
}

// fluxTime is a Flux time literal for unix ns.
func fluxTime(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// toFloat converts a Flux value; InfluxDB may hold a field written by
// someone else as an integer or boolean. Strings are skipped.
func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
