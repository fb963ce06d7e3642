# nav-orders: a sales order (contract sales-order v1) → a Business Central API v2.0 salesOrder,
# header and lines in one request (deep insert):
#   POST /BC/api/v2.0/companies(<id>)/salesOrders
# The shop's order number becomes externalDocumentNumber, so NAV's status message and any
# later query can be matched to the shop's order. BC fills prices-including-VAT from the
# customer (web-shop customers are set up with "Prices Including VAT"), so unitPrice is the
# shop's price with VAT. The company's local currency (RUB) is left blank, as BC writes it.
{
  externalDocumentNumber: .order_id,
  orderDate: (.created_at | split("T") | .[0]),
  customerNumber: .customer.id,
  shipToName: .customer.name,
  shipToAddressLine1: .delivery.street,
  shipToCity: .delivery.city,
  shipToCountry: .delivery.country,
  shipToPostCode: (.delivery.postcode // ""),
  phoneNumber: (.customer.phone // ""),
  email: (.customer.email // ""),
  salesOrderLines: [
    .lines[] | {
      sequence: (.line_no * 10000),
      lineType: "Item",
      lineObjectNumber: .sku,
      description: (.name // ""),
      quantity: .qty,
      unitPrice: .price
    }
  ]
}
+ (if .totals.currency == "RUB" then {} else {currencyCode: .totals.currency} end)
