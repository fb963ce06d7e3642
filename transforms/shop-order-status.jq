# shop-status: NAV's order status (contract order-status v1) → the parameters of 1C-Bitrix's
# REST method sale.order.update:
#   POST /rest/<user>/<webhook code>/sale.order.update.json   {"id": ..., "fields": {...}}
# Web-shop order numbers are BX-<year>-<Bitrix order ID>. Statuses of orders the shop did
# not place (the apps' IS-... orders) are not the shop's business: `select` drops them.
# RN ("registered in NAV") and ER ("NAV refused it") are order statuses the shop defines
# (sale.status.add); a refused order is also marked, with NAV's reason, for the shop's staff.
select(.order_id | startswith("BX-"))
| {
    id: (.order_id | split("-") | last),
    fields: (
      if .status == "created" then
        {statusId: "RN", additionalInfo: "NAV \(.nav_document_no), \(.at)"}
      else
        {
          statusId: "ER",
          marked: "Y",
          reasonMarked: ("[\(.error.class)] \(.error.message)" + (if .error.field then " (\(.error.field))" else "" end))
        }
      end
    )
  }
