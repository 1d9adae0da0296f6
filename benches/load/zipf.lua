-- wrk script: each request asks for one of N keys drawn from a Zipf distribution
-- (P(rank k) ~ 1 / k^s), the shape of real image traffic: a few hot images, a long tail.
-- Env: ZIPF_KEYS (default 100000), ZIPF_S (default 1.1), ZIPF_SEED.
local n = tonumber(os.getenv("ZIPF_KEYS") or "100000")
local s = tonumber(os.getenv("ZIPF_S") or "1.1")
local cdf = {}

function init(args)
  math.randomseed(tonumber(os.getenv("ZIPF_SEED") or "42") + (args[1] and #args[1] or 0))
  local total = 0
  for k = 1, n do
    total = total + 1 / k ^ s
    cdf[k] = total
  end
  for k = 1, n do
    cdf[k] = cdf[k] / total
  end
end

local function draw()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  return wrk.format("GET", "/api/v1/images/zipf/" .. draw() .. ".jpg/proxy")
end
