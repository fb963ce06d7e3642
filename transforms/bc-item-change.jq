# bc-items: one entry of a Business Central webhook notification ({subscriptionId,
# expirationDateTime, resource, changeType, lastModifiedDateTime}; the route checks and
# removes clientState) → contract item-change v1. The item's id is the key in the resource
# path, api/v2.0/companies(<company id>)/items(<item id>); a "collection" entry has none.
(.resource | split("/items(")) as $parts
| {
    change: .changeType,
    resource: .resource,
    changed_at: .lastModifiedDateTime,
    subscription_id: .subscriptionId
  }
+ (if .expirationDateTime then {subscription_expires_at: .expirationDateTime} else {} end)
+ (if .changeType != "collection" and ($parts | length) > 1
   then {item_id: ($parts[1] | split(")") | .[0])}
   else {} end)
