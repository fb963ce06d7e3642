# nav-queries (reply): NAV's answer → the reply contract of the question. An OData unbound
# action returns {"@odata.context": ..., "value": "<the codeunit's text>"}; the text is JSON.
# NAV writes the local currency as "" and documents placed in NAV itself have no external
# document number (the shop's order id): both are filled in here.
(.value | fromjson) as $r
| if ($r | has("orders")) then
    {
      customer_id: $r.customerNo,
      orders: [
        $r.orders[] | {
          order_id: (if (.externalDocumentNo // "") == "" then .no else .externalDocumentNo end),
          nav_document_no: .no,
          date: .orderDate,
          total: .amountIncludingVAT,
          currency: (if (.currencyCode // "") == "" then "RUB" else .currencyCode end)
        }
      ]
    }
  else
    {order_id: $r.externalDocumentNo, status: "created", nav_document_no: $r.no, at: $r.lastModifiedDateTime}
  end
