-- wrk script for bench/ingress.py: replays pre-signed webhooks, one distinct delivery per
-- request, and counts 202s. Arguments: <data file> <source path prefix>.
-- Data file lines: "<event id> <hex signature> <body>".

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file, prefix = args[1], args[2]
  local step = tonumber(args[3] or "1")
  ids, sigs, bodies = {}, {}, {}
  local n = 0
  for line in io.lines(file) do
    n = n + 1
    if (n - 1) % step == tid then
      local id, sig, body = line:match("^(%S+) (%S+) (.*)$")
      ids[#ids + 1] = id
      sigs[#sigs + 1] = sig
      bodies[#bodies + 1] = body
    end
  end
  path = prefix
  i = 0
  accepted = 0
  other = 0
end

function request()
  i = i + 1
  if i > #ids then
    wrk.thread:stop()
    i = #ids
  end
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["X-Event-Id"] = ids[i],
    ["X-Signature"] = sigs[i],
  }, bodies[i])
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local acc, oth = 0, 0
  for _, t in ipairs(threads) do
    acc = acc + t:get("accepted")
    oth = oth + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"accepted":%d,"other":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, acc, oth,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout))
end
