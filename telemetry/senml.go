package telemetry

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"time"
)

// senmlRelative: resolved times below 2^28 seconds are relative to now.
const senmlRelative = 1 << 28

type senmlRecord struct {
	idx int // position in the pack, for errors
	ts  int64
	m   pmetric
}

// Bits of the SenML fields a record has, to refuse a field given twice.
const (
	fBN uint32 = 1 << iota
	fBT
	fBU
	fBV
	fBS
	fBVer
	fN
	fU
	fV
	fVS
	fVB
	fVD
	fS
	fT
	fUT
	fValues = fV | fVS | fVB | fVD
)

// DecodeSenML decodes a SenML JSON pack (RFC 8428) into readings. Rules:
//
//   - The pack is a non-empty array of at most MaxSenMLRecords records.
//   - Base fields apply to their record and the records after it until the
//     next record with the same base field (§4.1): bn (base name), bt (base
//     time), bv (base value, added to v). bu, bs and bver are read too: bu and
//     bs are ignored; a bver above 10 refuses the pack (§4.4).
//   - Regular fields: n, t, v, vs, vb, vd; u (unit), ut (update time) and s
//     (sum) are ignored. Units are not converted: the device type declares the
//     unit of each metric.
//   - Resolution (§4.6): name = bn + n, which must be a valid metric name
//     (ValidateMetricName; in particular no '/'); time = bt + t in seconds,
//     values below 2^28 being relative to now (§4.5.3), rounded to
//     milliseconds and within [0, MaxTS]; value = bv + v for numbers.
//   - Each record holds exactly one of v (number), vs (string), vb (bool) or
//     vd (data). vd is kept as a string metric holding its base64url text
//     verbatim, so the data is not lost; fieldhub does not decode it.
//   - A record with only base fields (bn, bt, bu, bv, bs, bver) sets them for
//     the records after it and yields no metric. A record with a sum and no
//     value is refused (sums are not stored).
//   - Unknown fields are ignored (§4.4 extensibility) unless their name ends
//     in '_', which marks a must-understand extension: such a pack is refused.
//   - Records with the same resolved time become one Reading, in record
//     order; readings are ordered by time. Two records with the same name and
//     time are refused: fieldhub keeps one value per (device, metric, time),
//     so records that differ only by unit (RFC 8428 §5.1.3) need distinct names.
//   - A field given twice in one record is refused.
//
// Errors are *DecodeError; their Index is the record's position in the pack.
func DecodeSenML(payload []byte, now int64) ([]Reading, error) {
	d := getDecoder(payload, now, FormatSenML)
	defer putDecoder(d)
	if err := d.senml(); err != nil {
		return nil, err
	}
	return d.finish(), nil
}

type senmlBase struct {
	t, v float64
}

func (d *decoder) senml() error {
	s := &d.s
	switch c := s.peek(); {
	case c == 0:
		return d.errorf(-1, "", CodeBadJSON, "payload is empty")
	case c == '[':
	case !isValueStart(c):
		return d.at(s.syntaxErr("expected an array"), -1, "")
	default:
		return d.errorf(-1, "", CodeBadField, "a SenML pack must be an array of records, got %s", kindName(c))
	}
	s.pos++
	if s.peek() == ']' {
		return d.errorf(-1, "", CodeBadField, "pack is an empty array; send at least one record")
	}
	d.bn = d.bn[:0]
	var base senmlBase
	for idx := 0; ; idx++ {
		if idx == MaxSenMLRecords {
			return d.errorf(idx, "", CodeTooLarge, "pack has more than %d records", MaxSenMLRecords)
		}
		if c := s.peek(); c != '{' {
			if !isValueStart(c) {
				return d.at(s.syntaxErr("expected a record object"), idx, "")
			}
			return d.errorf(idx, "", CodeBadField, "must be an object, got %s", kindName(c))
		}
		if err := d.senmlRecord(idx, &base); err != nil {
			return err
		}
		if !s.more(']') {
			if s.err != nil {
				return d.at(s.err, idx, "")
			}
			break
		}
	}
	if s.peek() != 0 {
		return d.at(s.syntaxErr("unexpected data after the JSON value"), -1, "")
	}
	if len(d.recs) == 0 {
		return d.errorf(-1, "", CodeBadField, "pack has no record with a value (v, vs, vb or vd)")
	}
	return d.senmlGroup()
}

// senmlRecord decodes record idx (s is at its '{') and, if it has a value,
// appends it resolved to d.recs.
func (d *decoder) senmlRecord(idx int, base *senmlBase) error {
	s := &d.s
	s.pos++
	rec := senmlRecord{idx: idx}
	var (
		seen uint32
		t    float64
		err  error
	)
	d.n = d.n[:0]
	if s.peek() == '}' {
		s.pos++
		return d.errorf(idx, "", CodeBadField, "record is empty")
	}
	for {
		if s.peek() != '"' {
			return d.at(s.syntaxErr("expected a field name"), idx, "")
		}
		if d.scratch, err = s.appendString(d.scratch[:0]); err != nil {
			return d.at(err, idx, "")
		}
		if err := s.colon(); err != nil {
			return d.at(err, idx, "")
		}
		var bit uint32
		var field string
		switch string(d.scratch) {
		case "bn":
			bit, field = fBN, "bn"
			if err = d.want(idx, field, '"'); err == nil {
				d.bn, err = s.appendString(d.bn[:0])
			}
		case "bt":
			bit, field = fBT, "bt"
			base.t, err = d.num(idx, field)
		case "bu":
			bit, field = fBU, "bu"
			if err = d.want(idx, field, '"'); err == nil {
				err = s.skipString()
			}
		case "bv":
			bit, field = fBV, "bv"
			base.v, err = d.num(idx, field)
		case "bs":
			bit, field = fBS, "bs"
			_, err = d.num(idx, field)
		case "bver":
			bit, field = fBVer, "bver"
			var v float64
			if v, err = d.num(idx, field); err == nil && (v != math.Trunc(v) || v < 1 || v > 10) {
				err = d.errorf(idx, field, CodeBadField, "version %v is not supported; fieldhub reads SenML versions 1 to 10", v)
			}
		case "n":
			bit, field = fN, "n"
			if err = d.want(idx, field, '"'); err == nil {
				d.n, err = s.appendString(d.n[:0])
			}
		case "u":
			bit, field = fU, "u"
			if err = d.want(idx, field, '"'); err == nil {
				err = s.skipString()
			}
		case "v":
			bit, field = fV, "v"
			rec.m.kind = KindNumber
			rec.m.num, err = d.num(idx, field)
		case "vs", "vd":
			bit, field = fVS, "vs"
			if d.scratch[1] == 'd' {
				bit, field = fVD, "vd"
			}
			if err = d.want(idx, field, '"'); err == nil {
				err = d.str(&rec.m)
			}
		case "vb":
			bit, field = fVB, "vb"
			if err = d.want(idx, field, 't'); err == nil {
				rec.m.kind = KindBool
				rec.m.b, err = s.boolean()
			}
		case "s":
			bit, field = fS, "s"
			_, err = d.num(idx, field)
		case "t":
			bit, field = fT, "t"
			t, err = d.num(idx, field)
		case "ut":
			bit, field = fUT, "ut"
			_, err = d.num(idx, field)
		default:
			field = fieldPath("", d.scratch)
			if n := len(d.scratch); n > 0 && d.scratch[n-1] == '_' {
				return d.errorf(idx, field, CodeBadField, "unsupported must-understand field (RFC 8428 §4.4)")
			}
			err = s.skipValue(0)
		}
		if err != nil {
			return d.at(err, idx, field)
		}
		if seen&bit != 0 {
			return d.errorf(idx, field, CodeBadField, "given twice")
		}
		seen |= bit
		if !s.more('}') {
			if s.err != nil {
				return d.at(s.err, idx, "")
			}
			break
		}
	}

	switch v := seen & fValues; {
	case v == 0 && seen&fS != 0:
		return d.errorf(idx, "s", CodeBadField, "a record with a sum and no value is not supported; send the value as v")
	case v == 0 && seen&(fN|fU|fT|fUT) != 0:
		return d.errorf(idx, "", CodeBadField, "has no value field (v, vs, vb or vd)")
	case v == 0:
		return nil // base fields only: they apply to the records that follow
	case v&(v-1) != 0:
		return d.errorf(idx, "", CodeBadField, "has more than one value field (v, vs, vb, vd)")
	}

	rec.m.name.off = len(d.buf)
	d.buf = append(d.buf, d.bn...)
	d.buf = append(d.buf, d.n...)
	rec.m.name.end = len(d.buf)
	if name := d.bytes(rec.m.name); len(name) == 0 {
		return d.errorf(idx, "n", CodeBadField, "record has no name (bn + n is empty)")
	} else if msg := checkName(name); msg != "" {
		return d.errorf(idx, "n", CodeBadField, "name %s (bn + n) %s", strconv.Quote(truncate(string(name), MaxMetricNameLen)), msg)
	}

	rt := base.t + t
	ms := rt * 1000
	if rt < senmlRelative {
		ms += float64(d.now)
	}
	ms = math.Round(ms)
	if !(ms >= 0 && ms <= MaxTS) {
		return d.errorf(idx, "t", CodeBadField, "time %v (bt + t) is outside 1970-01-01 to 9999-12-31", rt)
	}
	rec.ts = int64(ms)

	if rec.m.kind == KindNumber {
		rec.m.num += base.v
		if math.IsInf(rec.m.num, 0) {
			return d.errorf(idx, "v", CodeBadField, "bv + v is out of range; it must be finite")
		}
	}
	d.recs = append(d.recs, rec)
	return nil
}

// want checks that the value ahead is of the JSON type starting with c
// ('"' string, 't' bool, '0' number).
func (d *decoder) want(idx int, field string, c byte) error {
	s := &d.s
	got := s.peek()
	if !isValueStart(got) {
		return d.at(s.syntaxErr("expected a value"), idx, field)
	}
	if kindName(got) == kindName(c) {
		return nil
	}
	if err := s.skipValue(0); err != nil {
		return d.at(err, idx, field)
	}
	return d.errorf(idx, field, CodeBadField, "must be a %s, got %s", kindName(c), kindName(got))
}

func (d *decoder) num(idx int, field string) (float64, error) {
	if err := d.want(idx, field, '0'); err != nil {
		return 0, err
	}
	return d.s.float()
}

// senmlGroup turns d.recs into readings: one per resolved time, in time
// order, each with its records' metrics in pack order.
func (d *decoder) senmlGroup() error {
	byTS := func(a, b senmlRecord) int { return cmp.Compare(a.ts, b.ts) }
	if !slices.IsSortedFunc(d.recs, byTS) {
		slices.SortStableFunc(d.recs, byTS)
	}
	recs := d.recs
	for i := 0; i < len(recs); {
		j := i + 1
		for j < len(recs) && recs[j].ts == recs[i].ts {
			j++
		}
		if j-i > MaxMetricsPerReading {
			return d.errorf(recs[i+MaxMetricsPerReading].idx, "", CodeTooLarge, "more than %d records share the time %s", MaxMetricsPerReading, formatMS(recs[i].ts))
		}
		r := preading{ts: recs[i].ts, first: len(d.metrics)}
		for _, rec := range recs[i:j] {
			d.metrics = append(d.metrics, rec.m)
		}
		r.last = len(d.metrics)
		if a, b := d.dupName(d.metrics[r.first:r.last]); a >= 0 {
			first, second := recs[i+a].idx, recs[i+b].idx
			if first > second {
				first, second = second, first
			}
			name := d.bytes(d.metrics[r.first+a].name)
			return d.errorf(second, "n", CodeBadField, "name %q at time %s was already given in record %d; fieldhub keeps one value per name and time", name, formatMS(r.ts), first)
		}
		d.readings = append(d.readings, r)
		i = j
	}
	return nil
}

func formatMS(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
