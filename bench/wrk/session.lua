-- Each wrk thread (run with as many threads as connections) is one visitor: its first
-- response's cookie goes back with every later request, as a browser would send it.
local cookie = nil

request = function()
  if cookie then
    return wrk.format(nil, nil, { ["Cookie"] = cookie })
  end
  return wrk.format()
end

response = function(status, headers, body)
  if cookie == nil then
    local set = headers["Set-Cookie"] or headers["set-cookie"]
    if set then
      cookie = set:match("^([^;]+)")
    end
  end
end
