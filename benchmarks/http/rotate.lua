-- wrk script for bench_http.py: rotate through the request paths listed (one a line) in the
-- file named by the first script argument, so every request is a different machine's lookup.
-- Requests are formatted once in init() (the client's CPU is the limit for a fast server).
-- done() prints one machine-readable line: wrk's own counts and latency percentiles, and the
-- CPU clock ticks wrk itself used (/proc/self/stat utime+stime), to tell a client-bound run.
local reqs = {}
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then reqs[#reqs + 1] = wrk.format(nil, line) end
  end
  i = math.random(#reqs) - 1
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

local function cpu_ticks()
  local f = io.open("/proc/self/stat")
  if not f then return -1 end
  local stat = f:read("*a")
  f:close()
  local rest = stat:sub(stat:find(")", 1, true) + 2)
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return tonumber(fields[12]) + tonumber(fields[13])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d cpu_ticks=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, cpu_ticks()))
end
