package influx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	ihttp "github.com/influxdata/influxdb-client-go/v2/api/http"

	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// InfluxDB keeps int64 nanoseconds in [-(2^63-2), 2^63-2]; in milliseconds,
// with one spare at the top so that a query's stop (To + 1ns) fits.
const (
	minTS int64 = -9223372036854
	maxTS int64 = 9223372036853
)

// Append writes the samples and returns once InfluxDB acknowledged them.
// See the package doc for the retry policy and *store.RejectedError.
func (s *Store) Append(ctx context.Context, samples []telemetry.Sample) error {
	if len(samples) == 0 {
		return nil
	}
	var rej rejections
	send := make([]int, 0, len(samples))
	for i := range samples {
		if err := s.checkSample(&samples[i]); err != nil {
			rej.add([]int{i}, fmt.Sprintf("sample %d: %v", i, err))
			continue
		}
		send = append(send, i)
	}
	s.m.rejected.WithLabelValues(reasonInvalid).Add(float64(len(rej.index)))

	buf := make([]byte, 0, 64*len(send))
	for len(send) > 0 {
		buf = buf[:0]
		for _, i := range send {
			buf = s.appendLine(buf, &samples[i])
		}
		err := s.write(ctx, string(buf), len(send))
		if err == nil {
			break
		}
		var refused *refusedError
		if !errors.As(err, &refused) {
			return fmt.Errorf("influx append %d samples: %w", len(send), err)
		}
		// A field type conflict drops only the points of the named field:
		// set that metric aside and send the rest again (idempotent), so the
		// error lists exactly what was refused.
		if metric, ok := conflictField(refused.msg, s.opts.Measurement); ok {
			keep, drop := splitByMetric(samples, send, metric)
			if len(drop) > 0 {
				rej.add(drop, refused.Error())
				s.m.rejected.WithLabelValues(reasonRefused).Add(float64(len(drop)))
				send = keep
				continue
			}
		}
		rej.add(send, refused.Error())
		s.m.rejected.WithLabelValues(reasonRefused).Add(float64(len(send)))
		break
	}
	if len(rej.index) > 0 {
		return fmt.Errorf("influx append: %w", rej.err())
	}
	return nil
}

// rejections collects refused samples and the distinct reasons.
type rejections struct {
	index   []int
	reasons []string
}

func (r *rejections) add(idx []int, reason string) {
	r.index = append(r.index, idx...)
	const maxReasons = 5 // keep the message readable for a batch of bad samples
	if len(r.reasons) < maxReasons {
		r.reasons = append(r.reasons, reason)
	} else if len(r.reasons) == maxReasons {
		r.reasons = append(r.reasons, "...")
	}
}

func (r *rejections) err() *store.RejectedError {
	slices.Sort(r.index)
	return &store.RejectedError{Index: r.index, Reason: strings.Join(r.reasons, "; ")}
}

func splitByMetric(samples []telemetry.Sample, idx []int, metric string) (keep, drop []int) {
	for _, i := range idx {
		if samples[i].Metric == metric {
			drop = append(drop, i)
		} else {
			keep = append(keep, i)
		}
	}
	return keep, drop
}

// checkSample refuses what line protocol or InfluxDB cannot hold faithfully.
func (s *Store) checkSample(x *telemetry.Sample) error {
	if err := checkName(x.Device); err != nil {
		return fmt.Errorf("device %q: %w", x.Device, err)
	}
	if err := checkName(x.Metric); err != nil {
		return fmt.Errorf("metric %q: %w", x.Metric, err)
	}
	if x.Metric == "time" {
		return errors.New(`metric "time": reserved by InfluxDB`)
	}
	if math.IsNaN(x.Value) || math.IsInf(x.Value, 0) {
		return fmt.Errorf("metric %q: value %v cannot be stored", x.Metric, x.Value)
	}
	if x.TS < minTS || x.TS > maxTS {
		return fmt.Errorf("metric %q: timestamp %d ms outside InfluxDB's range", x.Metric, x.TS)
	}
	return nil
}

// checkName accepts a measurement, tag value or field key that line
// protocol carries unchanged: not empty, UTF-8, no backslash (InfluxDB 1.x
// reads "\\" before a separator as an escape) and no control characters
// (which cannot be escaped).
func checkName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for i, r := range s {
		if r == '\\' || r < 0x20 || r == 0x7f {
			return fmt.Errorf("has %q at byte %d, which line protocol cannot carry", r, i)
		}
	}
	return nil
}

// appendLine encodes one sample as a line of line protocol:
// measurement,device=D metric=value ts
func (s *Store) appendLine(b []byte, x *telemetry.Sample) []byte {
	b = append(b, s.meas...)
	b = append(b, ",device="...)
	b = appendEscaped(b, x.Device)
	b = append(b, ' ')
	b = appendEscaped(b, x.Metric)
	b = append(b, '=')
	// No "i" suffix: line protocol reads "21" as the float 21.
	b = strconv.AppendFloat(b, x.Value, 'g', -1, 64)
	b = append(b, ' ')
	b = strconv.AppendInt(b, x.TS, 10)
	return append(b, '\n')
}

// appendEscaped escapes a tag value or field key (checked by checkName).
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ',', '=', ' ':
			b = append(b, '\\', c)
		default:
			b = append(b, c)
		}
	}
	return b
}

func escapeMeasurement(s string) string {
	return strings.NewReplacer(",", `\,`, " ", `\ `).Replace(s)
}

// refusedError is an answer that resending cannot change.
type refusedError struct {
	status int
	msg    string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("InfluxDB answered %d: %s", e.status, e.msg)
}

// conflictField extracts the field named by InfluxDB's field type conflict
// message: `... field type conflict: input field "F" on measurement "M" is
// type integer, already exists as type float dropped=1`.
func conflictField(msg, measurement string) (string, bool) {
	const pre = `field type conflict: input field "`
	i := strings.Index(msg, pre)
	if i < 0 {
		return "", false
	}
	rest := msg[i+len(pre):]
	j := strings.Index(rest, `" on measurement "`+measurement+`" is type`)
	if j < 0 {
		return "", false
	}
	return rest[:j], true
}

// write sends one body, retrying failures that may heal, until it is
// acknowledged, refused for good (*refusedError), or ctx is done.
func (s *Store) write(ctx context.Context, body string, n int) error {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
		t0 := time.Now()
		err := s.writer.WriteRecord(actx, body)
		s.m.duration.Observe(time.Since(t0).Seconds())
		timedOut := errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		if err == nil {
			s.m.up.Set(1)
			s.m.written.Add(float64(n))
			if attempt > 0 {
				s.log.Info("influx write succeeded after retries", "samples", n, "attempts", attempt+1, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("gave up after %d attempts: %w (last error: %v)", attempt+1, ctx.Err(), err)
		}
		kind, retryAfter, refused := classify(err, timedOut)
		s.m.failures.WithLabelValues(kind).Inc()
		if refused != nil {
			s.m.up.Set(1)
			s.log.Warn("influx refused a write", "samples", n, "status", refused.status, "err", refused.msg)
			return refused
		}
		if kind != kindThrottled {
			s.m.up.Set(0)
		}
		delay := s.backoff(attempt, retryAfter)
		// Log the first failure and then now and then, not every attempt.
		if attempt == 0 || attempt%20 == 0 {
			s.log.Warn("influx write failed; retrying the batch", "samples", n, "kind", kind, "attempt", attempt+1, "next_in", delay.Round(time.Millisecond), "err", err)
		} else {
			s.log.Debug("influx write failed; retrying the batch", "samples", n, "kind", kind, "attempt", attempt+1, "next_in", delay.Round(time.Millisecond), "err", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("gave up after %d attempts: %w (last error: %v)", attempt+1, ctx.Err(), err)
		case <-s.closed:
			t.Stop()
			return fmt.Errorf("gave up after %d attempts: store closed (last error: %v)", attempt+1, err)
		}
		s.m.retries.Inc()
	}
}

// classify sorts a failed write into a metric kind, and returns a
// *refusedError when retrying cannot help.
func classify(err error, timedOut bool) (kind string, retryAfter time.Duration, refused *refusedError) {
	var he *ihttp.Error
	if !errors.As(err, &he) || he.StatusCode == 0 {
		if timedOut {
			return kindTimeout, 0, nil
		}
		return kindConnection, 0, nil
	}
	retryAfter = time.Duration(he.RetryAfter) * time.Second
	switch code := he.StatusCode; {
	case code == 429:
		return kindThrottled, retryAfter, nil
	case code == 408:
		return kindTimeout, retryAfter, nil
	case code >= 500:
		return kindServer, retryAfter, nil
	case code == 401, code == 403, code == 404:
		// A wrong token or a missing bucket is the hub's configuration, not
		// the samples' fault: dead-lettering every reading would be wrong.
		// Keep retrying (back-pressure, fieldhub_influx_up 0) until an
		// operator fixes it.
		return kindConfig, retryAfter, nil
	default:
		msg := he.Message
		if msg == "" {
			msg = he.Error()
		}
		return kindRejected, 0, &refusedError{status: code, msg: msg}
	}
}

// backoff is Min·2^attempt capped at Max, with "equal jitter" (half fixed,
// half random) so that many blocked writers do not retry in lockstep, and
// at least the server's Retry-After (capped at Max).
func (s *Store) backoff(attempt int, retryAfter time.Duration) time.Duration {
	b := s.opts.RetryBackoff
	d := b.Max
	if attempt < 32 {
		if x := b.Min << attempt; x > 0 && x < b.Max {
			d = x
		}
	}
	d = d/2 + rand.N(d/2+1)
	if retryAfter > d {
		d = min(retryAfter, b.Max)
	}
	return d
}
