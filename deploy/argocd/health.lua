-- Argo CD health check for kubequant.io/ModelOptimization.
--
-- Install it under the key `resource.customizations.health.kubequant.io_ModelOptimization`
-- of the argocd-cm ConfigMap (see argocd-cm.yaml beside this file and docs/gitops.md).
--
-- The operator writes kstatus conditions (Ready, Reconciling, Stalled, Suspended) and
-- status.observedGeneration. The mapping:
--   status missing, or observedGeneration behind metadata.generation -> Progressing
--   Stalled=True   (InvalidSpec, QualityGateFailed, OOMKilled, ...) -> Degraded
--   Suspended=True (spec.suspend, or Kueue holding the Job)        -> Suspended
--   Ready=True                                                     -> Healthy
--   phase Failed without a Stalled condition                       -> Degraded
--   anything else (Job created, engine running)                    -> Progressing
-- Conditions stamped with an older observedGeneration are ignored (they describe an older
-- spec: a spec edit starts a new run, which must not be reported Healthy from the old one).

local hs = {}

local function condition(status, ctype, generation)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      if generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
        return nil
      end
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" and string.find(c.message, c.reason, 1, true) ~= 1 then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubequant operator to observe the object"
  return hs
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if generation ~= nil then
  if status.observedGeneration == nil or status.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    if status.observedGeneration ~= nil then
      hs.message = hs.message .. " (status describes generation " .. tostring(status.observedGeneration) .. ")"
    end
    return hs
  end
end

local stalled = condition(status, "Stalled", generation)
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local suspended = condition(status, "Suspended", generation)
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(suspended, "Suspended")
  return hs
end

local ready = condition(status, "Ready", generation)
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  if status.message ~= nil and status.message ~= "" then
    hs.message = status.message
  else
    hs.message = "Failed"
  end
  return hs
end

hs.status = "Progressing"
local reconciling = condition(status, "Reconciling", generation)
hs.message = describe(reconciling, describe(ready, status.message or "Progressing"))
if status.progress ~= nil and status.progress.stage ~= nil then
  local p = status.progress
  if p.generation == nil or generation == nil or p.generation == generation then
    hs.message = hs.message .. " [" .. p.stage
    if p.percent ~= nil then
      hs.message = hs.message .. " " .. tostring(p.percent) .. "%"
    end
    hs.message = hs.message .. "]"
  end
end
return hs
