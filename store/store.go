// Package store defines fieldhub's time-series contract. Backends live in
// sub-packages named for their engine: store/tsdb (embedded Prometheus TSDB,
// the default) and store/influx (InfluxDB v2 write API, Flux queries).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// ErrTooOld is returned (wrapped) by Append when a sample is older than the
// backend accepts (the embedded TSDB's out-of-order window). The samples of
// the batch that are not too old are still written; the error lists which
// were refused, see TooOldError.
var ErrTooOld = errors.New("sample older than the store accepts")

// TooOldError names the samples of a batch that the store refused as too old.
type TooOldError struct {
	// Index holds the positions in the appended slice of the refused samples.
	Index []int
	// MinTS is the oldest timestamp (unix ms) the store accepted at the time.
	MinTS int64
}

func (e *TooOldError) Error() string {
	return fmt.Sprintf("%d samples older than %s", len(e.Index), time.UnixMilli(e.MinTS).UTC().Format(time.RFC3339))
}

func (e *TooOldError) Unwrap() error { return ErrTooOld }

// ErrTooNew is returned (wrapped) by Append when a sample's timestamp is
// further ahead of the clock than the backend accepts (the embedded TSDB
// refuses them: its out-of-order window follows the newest sample of any
// series, so one device with a fast clock would make every other device's
// samples too old). As with ErrTooOld the rest of the batch is written; see
// TooNewError.
var ErrTooNew = errors.New("sample further in the future than the store accepts")

// TooNewError names the samples of a batch that the store refused as too far
// in the future. Append may return it joined with a TooOldError
// (errors.Join); use errors.As to get either.
type TooNewError struct {
	// Index holds the positions in the appended slice of the refused samples.
	Index []int
	// MaxTS is the newest timestamp (unix ms) the store accepted at the time.
	MaxTS int64
}

func (e *TooNewError) Error() string {
	return fmt.Sprintf("%d samples newer than %s", len(e.Index), time.UnixMilli(e.MaxTS).UTC().Format(time.RFC3339))
}

func (e *TooNewError) Unwrap() error { return ErrTooNew }

// ErrRejected is returned (wrapped) by Append when the store refused samples
// for good: sending them again cannot succeed (a remote store's field type
// conflict, a name or value it cannot hold, a missing bucket). The samples of
// the batch that are not listed were written; see RejectedError.
var ErrRejected = errors.New("samples rejected by the store")

// RejectedError names the samples of a batch that the store refused for good,
// so the caller can dead-letter them instead of retrying.
type RejectedError struct {
	// Index holds the positions in the appended slice of the refused samples.
	// It may list a sample that was written after all (when the store's
	// answer does not say exactly which were refused); appending it again is
	// harmless.
	Index []int
	// Reason is the store's explanation.
	Reason string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("%d samples rejected: %s", len(e.Index), e.Reason)
}

func (e *RejectedError) Unwrap() error { return ErrRejected }

// Appender writes samples. Append returns only when the samples are durable
// (synced to disk, or acknowledged by the remote store), so a caller may
// acknowledge them to devices. Writing a sample that is already stored, same
// (device, metric, ts), stores it once. Implementations are safe for
// concurrent use; callers batch for throughput.
type Appender interface {
	Append(ctx context.Context, samples []telemetry.Sample) error
}

// Agg is how a bucketed series query reduces the samples of a bucket.
type Agg string

const (
	AggAvg  Agg = "avg"
	AggMin  Agg = "min"
	AggMax  Agg = "max"
	AggLast Agg = "last"
)

// ParseAgg checks an aggregation name.
func ParseAgg(s string) (Agg, error) {
	switch a := Agg(s); a {
	case AggAvg, AggMin, AggMax, AggLast:
		return a, nil
	case "":
		return AggAvg, nil
	}
	return "", fmt.Errorf("unknown aggregation %q (want avg, min, max or last)", s)
}

// SeriesQuery selects one metric of one device over [From, To] (unix ms,
// both inclusive). With Step > 0 the range is cut into buckets of Step,
// aligned to From, each reduced with Agg and stamped with its start;
// empty buckets are left out. With Step == 0 raw samples are returned.
type SeriesQuery struct {
	Device string
	Metric string
	From   int64
	To     int64
	Step   time.Duration
	Agg    Agg
}

// Point is one value of a series.
type Point struct {
	TS    int64   `json:"ts"`
	Value float64 `json:"value"`
}

// Querier reads what was appended. Implementations are safe for concurrent use.
type Querier interface {
	// Latest returns the newest sample of each metric of the device, sorted by metric name.
	Latest(ctx context.Context, device string) ([]telemetry.Sample, error)
	// Series returns the points of one metric in time order.
	Series(ctx context.Context, q SeriesQuery) ([]Point, error)
}

// Store is a backend: both sides, plus retention and closing.
type Store interface {
	Appender
	Querier
	// Close flushes and releases the backend. Not safe to call concurrently with other methods.
	Close() error
}
